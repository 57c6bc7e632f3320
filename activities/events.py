"""The audit log's writers on the worker: ``AuditInterceptor`` records every activity execution
of a task (each attempt's start and its outcome, with duration and detail) and the waits it
meets; ``AuditActivities.record_task_end`` is the local activity a task ends with.

A step's name and whether it is an undo come from the ``taskomatic-step`` header, which the
workflow side (``workflows.events``) puts on each activity a runbook step schedules; without it
(an activity outside a step, e.g. a release of claims) the activity type names the step. Every
write is keyed by (workflow id, run id, activity id, attempt, event kind), so a retried write or a
re-delivered attempt adds nothing. A failed write is logged and never fails the task's activity:
the audit log must not take the engine down with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from taskomatic.errors import error_info
from taskomatic.inventory.db import Database
from taskomatic.inventory.events import record_event
from taskomatic.logs import get_logger
from taskomatic.models.events import RecordedEvent, TaskEndInput, TaskEventInput

log = get_logger(component="audit")

# The header a runbook step puts on its activity: {"step": name, "undo": bool} (JSON).
STEP_HEADER = "taskomatic-step"
# The activity that is itself a wait: for another task to end (OrderingActivities).
WAIT_FOR_TASK = "await_task_end"


class AuditActivities:
    """The audit log's activity: the end of a task."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def record_task_end(self, inp: TaskEndInput) -> RecordedEvent:
        """Record that ``inp.task_id`` ended (``state``, ``error``); once per run."""
        detail: dict[str, Any] = {"state": inp.state, "run_id": inp.run_id}
        if inp.error is not None:
            detail["error"] = inp.error
        added = record_event(self.db, TaskEventInput(
            key=f"{inp.task_id}/{inp.run_id}/end", task_id=inp.task_id, kind="end",
            task_kind=inp.task_kind, detail=detail))
        return RecordedEvent(added=added)


class AuditInterceptor(Interceptor):
    """Worker interceptor: writes step_started / step_finished / step_failed (undo_* for undos)
    and waiting events to ``task_events`` for every activity a task runs (not the end's own)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _AuditedActivity(next, self.db)


class _AuditedActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, db: Database) -> None:
        super().__init__(next)
        self.db = db

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.activity_type == AuditActivities.record_task_end.__name__ or not info.workflow_id:
            return await super().execute_activity(input)
        step, undo = _step_of(input, info.activity_type)
        prefix = "undo" if undo else "step"
        key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}/{info.attempt}"
        base = {"task_id": info.workflow_id, "task_kind": info.workflow_type or "",
                "step": step, "attempt": info.attempt}
        about = {"activity": info.activity_type, "activity_id": info.activity_id,
                 "run_id": info.workflow_run_id}
        await self._write(TaskEventInput(key=f"{key}/started", kind=f"{prefix}_started",
                                         detail=about, **base))
        if info.activity_type == WAIT_FOR_TASK and input.args:  # the activity is the wait
            on = [f"task {getattr(input.args[0], 'task_id', '?')} to end"]
            await self._write(TaskEventInput(key=f"{key}/waiting", kind="waiting",
                                             detail={**about, "on": on}, **base))
        begun = time.monotonic()
        try:
            result = await super().execute_activity(input)
        except BaseException as err:
            failure = error_info(err) if isinstance(err, ApplicationError) else None
            message = failure.message if failure else (str(err) or type(err).__name__)
            detail = {**about, "error": message,
                      "error_type": failure.type.value if failure else type(err).__name__}
            await self._write(TaskEventInput(key=f"{key}/failed", kind=f"{prefix}_failed",
                                             duration_ms=_ms(begun), detail=detail, **base))
            raise
        await self._write(TaskEventInput(
            key=f"{key}/finished", kind=f"{prefix}_finished", duration_ms=_ms(begun),
            detail={**about, "detail": _detail(result)}, **base))
        waits = _blockers(result)
        if waits:
            await self._write(TaskEventInput(key=f"{key}/waiting", kind="waiting",
                                             detail={**about, "on": waits}, **base))
        return result

    async def _write(self, event: TaskEventInput) -> None:
        try:
            await asyncio.to_thread(record_event, self.db, event)
        except Exception as err:  # the log is secondary: never fail the step for it
            log.warning("audit event not recorded", task_id=event.task_id, event=event.kind,
                        error=str(err))


def _step_of(input: ExecuteActivityInput, activity_type: str) -> tuple[str, bool]:
    """(step name, is an undo) from the step header; the activity type if there is none."""
    payload = (input.headers or {}).get(STEP_HEADER)
    if payload is None:
        return activity_type, False
    try:
        about = json.loads(payload.data)
        return str(about["step"]), bool(about.get("undo", False))
    except (ValueError, KeyError, TypeError):
        return activity_type, False


def _blockers(result: Any) -> list[str]:
    """What a claim that was not granted waits on: resources held by, or queued behind, other
    tasks (``ClaimResult.blockers``); empty for any other result."""
    blockers = getattr(result, "blockers", None)
    if blockers and not getattr(result, "granted", True):
        return [b.describe() for b in blockers]
    return []


def _detail(result: Any) -> str | None:
    detail = getattr(result, "detail", None)
    return detail if isinstance(detail, str) else None


def _ms(begun: float) -> int:
    return int((time.monotonic() - begun) * 1000)
