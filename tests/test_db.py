"""The inventory connection pool: connections are reused, and a dead one is replaced."""

from __future__ import annotations

import psycopg2
import pytest
from temporalio.exceptions import ApplicationError

from taskomatic.inventory.db import Database


def _backend_pid(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        return int(cur.fetchone()["pid"])


def test_pool_reuses_sessions_and_replaces_a_killed_one(database_url: str) -> None:
    db = Database(database_url, max_connections=2)
    try:
        first = _backend_pid(db)
        assert [_backend_pid(db) for _ in range(5)] == [first] * 5  # no new session each time
        admin = psycopg2.connect(database_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
        admin.close()
        with pytest.raises(ApplicationError) as lost:
            _backend_pid(db)
        assert (lost.value.type, lost.value.non_retryable) == ("DatabaseUnavailable", False)
        assert _backend_pid(db) != first  # the retry gets a new, working session
    finally:
        db.close()
