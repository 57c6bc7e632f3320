"""The audit log (``task_events``): record an event once, read a task's story, follow the stream,
and sweep old rows by their own retention (``Settings.task_events_retention_days``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2.extras

from taskomatic.inventory.db import Database
from taskomatic.models.events import TaskEvent, TaskEventInput

_COLUMNS = "id, key, task_id, kind, task_kind, step, attempt, duration_ms, detail, at"


def record_event(db: Database, event: TaskEventInput) -> bool:
    """Insert ``event`` unless an event with its ``key`` exists; True if this call added it."""
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO task_events (key, task_id, kind, task_kind, step, attempt, duration_ms,"
            " detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING"
            " RETURNING id",
            (event.key, event.task_id, event.kind, event.task_kind, event.step, event.attempt,
             event.duration_ms, psycopg2.extras.Json(event.detail)))
        return cur.fetchone() is not None


def task_log(db: Database, task_id: str) -> list[TaskEvent]:
    """Every event of ``task_id``: its ``submitted`` event first (the starter writes it once the
    task has started, so a quick worker's first step may be written before it), then the others
    oldest first (a child task, e.g. a ClearHost's MigrateVm, has a log of its own under its own
    id)."""
    with db.transaction() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM task_events WHERE task_id = %s"
                    " ORDER BY kind <> 'submitted', id", (task_id,))
        return [TaskEvent.model_validate(row) for row in cur.fetchall()]


def events_since(db: Database, since: int = 0, limit: int = 500) -> list[TaskEvent]:
    """The audit stream: events with ``id > since``, oldest first, at most ``limit``. The last
    event's ``id`` is the cursor of the next call."""
    with db.transaction() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM task_events WHERE id > %s ORDER BY id LIMIT %s",
                    (since, limit))
        return [TaskEvent.model_validate(row) for row in cur.fetchall()]


def sweep_events(db: Database, retention_days: float) -> int:
    """Delete events older than ``retention_days``; returns how many were deleted."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    with db.transaction() as cur:
        cur.execute("DELETE FROM task_events WHERE at < %s", (cutoff,))
        return int(cur.rowcount)



def task_resources(db: Database, task_ids: list[str]) -> dict[str, list[str]]:
    """task id → the resources its ``submitted`` event names, for the tasks among ``task_ids``
    that the starter submitted (children started by a task have none)."""
    with db.transaction() as cur:
        cur.execute("SELECT task_id, detail->'resources' AS resources FROM task_events"
                    " WHERE kind = 'submitted' AND task_id = ANY(%s)", (task_ids,))
        return {row["task_id"]: list(row["resources"] or []) for row in cur.fetchall()}


def newest_event_id(db: Database) -> int:
    """The id of the newest event (0 if the log is empty): the cursor of "from now on"."""
    with db.transaction() as cur:
        cur.execute("SELECT coalesce(max(id), 0) AS newest FROM task_events")
        row = cur.fetchone()
        return int(row["newest"]) if row else 0


def recorded_keys(db: Database, keys: list[str]) -> set[str]:
    """Those of ``keys`` that the log already holds."""
    with db.transaction() as cur:
        cur.execute("SELECT key FROM task_events WHERE key = ANY(%s)", (keys,))
        return {row["key"] for row in cur.fetchall()}
