"""The audit log's writers on the worker: ``AuditInterceptor`` records every activity execution
of a task (each attempt's start and its outcome, with duration and detail) and the waits it
meets; ``TaskEnds`` records each task's end (state, error) from Temporal's list of closed
workflows, so no task runs an extra command for its log.

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
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from taskomatic.errors import error_info
from taskomatic.inventory.db import Database
from taskomatic.inventory.events import record_event, recorded_keys
from taskomatic.logs import get_logger
from taskomatic.models.events import TaskEventInput

log = get_logger(component="audit")

# The header a runbook step puts on its activity: {"step": name, "undo": bool} (JSON).
STEP_HEADER = "taskomatic-step"
# The activity that is itself a wait: for another task to end (OrderingActivities).
WAIT_FOR_TASK = "await_task_end"


class AuditInterceptor(Interceptor):
    """Worker interceptor: writes step_started / step_finished / step_failed (undo_* for undos)
    and waiting events to ``task_events`` for every activity a task runs."""

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
        if not info.workflow_id:
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


# How a closed workflow ended → the task's end state in the log (continued-as-new is no end).
_END_STATES = {
    WorkflowExecutionStatus.COMPLETED: "complete", WorkflowExecutionStatus.FAILED: "error",
    WorkflowExecutionStatus.CANCELED: "cancelled", WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}


class TaskEnds:
    """Records the ``end`` event (state, error) of every task of ``task_queue`` that closed,
    found in Temporal's list of closed workflows (visibility), so no task runs an extra command
    for it. ``run`` polls every ``every_seconds``; each poll asks for what closed since the
    newest close time seen (less ``overlap``, for the list's lag) and records the ends not yet
    recorded (key ``task/run/end``: several workers doing this at once is harmless). At start it
    looks back ``lookback`` for ends missed while no worker ran."""

    def __init__(self, client: Client, db: Database, task_queue: str,
                 lookback: timedelta = timedelta(days=1),
                 overlap: timedelta = timedelta(seconds=30)) -> None:
        self.client, self.db, self.task_queue = client, db, task_queue
        self.since = datetime.now(UTC) - lookback
        self.overlap = overlap

    async def run(self, every_seconds: float = 1.0) -> None:
        while True:
            try:
                await self.poll()
            except (RPCError, ApplicationError) as err:
                log.warning("task ends not recorded this round", error=str(err))
            await asyncio.sleep(every_seconds)

    async def poll(self) -> int:
        """One round; returns how many ends it recorded."""
        stamp = self.since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        query = (f"TaskQueue = '{self.task_queue}' AND ExecutionStatus != 'Running'"
                 f" AND CloseTime >= '{stamp}'")
        closed = [wf async for wf in self.client.list_workflows(query)
                  if wf.status in _END_STATES]
        if not closed:
            return 0
        newest = max(wf.close_time for wf in closed if wf.close_time is not None)
        keys = {f"{wf.id}/{wf.run_id}/end": wf for wf in closed}
        done = await asyncio.to_thread(recorded_keys, self.db, list(keys))
        for key, wf in keys.items():
            if key not in done:
                await asyncio.to_thread(record_event, self.db, await self._end(key, wf))
        self.since = max(self.since, newest - self.overlap)
        return len(keys) - len(done)

    async def _end(self, key: str, wf: WorkflowExecution) -> TaskEventInput:
        state = _END_STATES[wf.status]  # type: ignore[index]
        detail: dict[str, Any] = {"state": state, "run_id": wf.run_id}
        if state != "complete":
            handle = self.client.get_workflow_handle(wf.id, run_id=wf.run_id)
            try:
                await handle.result(follow_runs=False)
            except WorkflowFailureError as err:
                detail["error"] = _failure_detail(err.cause)
        return TaskEventInput(key=key, task_id=wf.id, kind="end", task_kind=wf.workflow_type,
                              detail=detail)


def _failure_detail(cause: BaseException) -> dict[str, Any]:
    """A task's failure: its ``TaskFailure`` (first detail of the ApplicationError a runbook
    ends with), else the error's type and message (cancelled, terminated, timed out)."""
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0],
                                                                             dict):
        return dict(cause.details[0])
    return {"error_type": type(cause).__name__, "message": str(cause)}
