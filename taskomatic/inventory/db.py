"""PostgreSQL access: a thread-safe connection pool, transactions, and versioned migrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from taskomatic.errors import ErrorType, task_error
from taskomatic.logs import get_logger
from taskomatic.metrics import POOL_WAIT_SECONDS

log = get_logger(component="db")

# Any key works as long as every upgrader uses the same one.
_MIGRATION_LOCK_KEY = 0x7A5C0_0001


class Database:
    """A pool of connections to one inventory database; safe to share across threads.

    Connections are opened on demand, up to ``max_connections``, and kept open when returned
    (psycopg2's own pools close those beyond their minimum, paying a new server session almost
    every transaction). A caller finding them all in use waits for one.
    """

    def __init__(self, url: str, max_connections: int = 32,
                 wait_seconds: float = 30.0) -> None:
        self.url = url
        self._max = max_connections
        self._wait = wait_seconds
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        """One transaction: committed on success, rolled back on any error.

        A lost or refused connection becomes a retryable ``DatabaseUnavailable``.
        """
        asked = time.monotonic()
        got = self._slots.acquire(timeout=self._wait)
        POOL_WAIT_SECONDS.observe(time.monotonic() - asked)
        if not got:
            raise task_error(ErrorType.DATABASE_UNAVAILABLE,
                             f"no free inventory connection after {self._wait:g}s "
                             f"(all {self._max} in use)")
        conn: psycopg2.extensions.connection | None = None
        try:
            conn = self._checkout()
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
            conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as err:
            raise task_error(
                ErrorType.DATABASE_UNAVAILABLE, f"inventory database connection failed: {err}"
            ) from err
        except BaseException:
            if conn is not None and not conn.closed:
                conn.rollback()
            raise
        finally:
            self._checkin(conn)
            self._slots.release()

    def _checkout(self) -> psycopg2.extensions.connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return psycopg2.connect(self.url)

    def _checkin(self, conn: psycopg2.extensions.connection | None) -> None:
        if conn is None or conn.closed:
            return
        if conn.status != psycopg2.extensions.STATUS_READY:  # broken mid-transaction
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def get_database(url: str, max_connections: int = 32) -> Database:
    """The process-wide pool for ``url`` (sized by its first caller)."""
    with _databases_lock:
        if url not in _databases:
            _databases[url] = Database(url, max_connections)
        return _databases[url]


def migrations() -> list[tuple[int, str, str]]:
    """The bundled migrations as (version, name, sql), in order."""
    found = []
    for entry in (resources.files("taskomatic.inventory") / "schema").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def upgrade(url: str) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied.

    Concurrent upgraders serialize on an advisory lock, so running this twice at once is safe.
    """
    applied: list[str] = []
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            # IF NOT EXISTS is not safe against a concurrent creator: take the lock first.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for version, name, text in migrations():
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
                cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,))
                if cur.fetchone():
                    continue
                cur.execute(text)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(name)
                log.info("migration applied", migration=name)
    finally:
        conn.close()
    return applied


def with_dbname(url: str, name: str) -> str:
    """``url`` pointing at database ``name``, in the form it was given (URL or key=value)."""
    if "://" in url:
        return urlsplit(url)._replace(path=f"/{name}").geturl()
    params = psycopg2.extensions.parse_dsn(url)
    params["dbname"] = name
    return str(psycopg2.extensions.make_dsn(**params))


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; True if it was created."""
    params = psycopg2.extensions.parse_dsn(url)
    name = params.get("dbname", "postgres")
    admin = psycopg2.connect(**{**params, "dbname": "postgres"})
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg2.errors.DuplicateDatabase:
                return False
            return True
    finally:
        admin.close()


def drop_database(url: str) -> None:
    """Drop the database named in ``url``, ending its sessions first."""
    name = psycopg2.extensions.parse_dsn(url)["dbname"]
    admin = psycopg2.connect(with_dbname(url, "postgres"))
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        admin.close()


def is_reachable(url: str, timeout_seconds: int = 2) -> bool:
    """True if a PostgreSQL server answers at ``url`` (its database need not exist yet)."""
    params: dict[str, Any] = psycopg2.extensions.parse_dsn(url)
    params.update(dbname="postgres", connect_timeout=timeout_seconds)
    try:
        psycopg2.connect(**params).close()
    except psycopg2.OperationalError:
        return False
    return True
