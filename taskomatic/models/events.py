"""The audit log's rows (table ``task_events``): each task's story, kept past Temporal's
retention. Written by the starter (``submitted``), the worker's activity interceptor (steps, undos,
waits) and the task's end (``end``); read by ``taskomatic tasks log``, ``GET /tasks/{id}/log``
and the audit stream ``GET /events``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from taskomatic.models.base import Model

EventKind = Literal["submitted", "step_started", "step_finished", "step_failed",
                    "undo_started", "undo_finished", "undo_failed", "waiting", "end"]


class TaskEventInput(Model):
    """One event to record. ``key`` makes the write idempotent: a second write with the same key
    (a retried activity attempt, a replayed end) adds nothing."""

    key: str = Field(min_length=1, max_length=600)
    task_id: str = Field(min_length=1, max_length=300)
    kind: EventKind
    task_kind: str = ""
    step: str | None = None
    attempt: int | None = None
    duration_ms: int | None = Field(None, ge=0)
    detail: dict[str, Any] = {}


class TaskEvent(TaskEventInput):
    """A recorded event: ``id`` is its place in the audit stream (a cursor), ``at`` when it was
    written (UTC)."""

    id: int
    at: datetime
