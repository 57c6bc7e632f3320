"""Starter library: the audit log (mixed into ``TaskomaticClient``).

    events = await client.task_log(task.id)      # the task's story, oldest first
    page = await client.events(since=cursor)     # the audit stream after ``cursor``

The log lives in the inventory database (``task_events``), so it outlives Temporal's history. The
``submitted`` event is written here, by the submit path; steps, undos and waits by the worker
(``activities.events``); the end by the task itself (``workflows.events.record_end``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starter.errors import RequestError
from taskomatic.inventory.db import Database
from taskomatic.inventory.events import (
    events_since,
    newest_event_id,
    record_event,
    task_log,
    task_resources,
)
from taskomatic.logs import get_logger
from taskomatic.models import TaskRequest
from taskomatic.models.events import TaskEvent, TaskEventInput

log = get_logger(component="starter")

# Most events one read of the audit stream returns.
MAX_EVENTS_PAGE = 1000


class AuditReads:
    """Client calls that read (and the submit path that starts) the audit log."""

    db: Database

    async def task_log(self, task_id: str) -> list[TaskEvent]:
        """Every event of ``task_id``, oldest first (empty for an unknown task)."""
        return await asyncio.to_thread(task_log, self.db, task_id)

    async def events(self, since: int = 0, limit: int = 500) -> list[TaskEvent]:
        """The audit stream: events after the cursor ``since`` (an event id), oldest first, at
        most ``limit`` (1-1000). Raises ``RequestError`` on ``since`` or ``limit``."""
        if since < 0:
            raise RequestError("since", f"must be an event id, 0 or more (got {since})")
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise RequestError("limit", f"must be 1-{MAX_EVENTS_PAGE} (got {limit})")
        return await asyncio.to_thread(events_since, self.db, since, limit)

    async def newest_event_id(self) -> int:
        """The newest event's id (0 if none): the cursor of "from now on"."""
        return await asyncio.to_thread(newest_event_id, self.db)

    async def task_resources(self, task_ids: list[str]) -> dict[str, list[str]]:
        """task id → the resources named at its submission (tasks the starter submitted)."""
        return await asyncio.to_thread(task_resources, self.db, sorted(set(task_ids)))

    async def _record_submitted(self, task_id: str, run_id: str | None, kind: str,
                               req: TaskRequest, resources: list[str]) -> None:
        """The ``submitted`` event of a task just started: who asked, what, for which
        resources. Best effort: the task runs whether or not its log could be written."""
        detail: dict[str, Any] = {"requested_by": req.requested_by, "resources": resources,
                                  "after": req.after, "run_id": run_id,
                                  "request": req.model_dump(mode="json")}
        event = TaskEventInput(key=f"{task_id}/{run_id}/submitted", task_id=task_id,
                               kind="submitted", task_kind=kind, detail=detail)
        try:
            await asyncio.to_thread(record_event, self.db, event)
        except Exception as err:
            log.warning("submitted event not recorded", task_id=task_id, error=str(err))
