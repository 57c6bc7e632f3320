"""Tasks as operators see them: state, what they wait on, steps, result or error.

A task's state comes from Temporal: a closed execution's status decides complete / error /
cancelled; an open one publishes new / waiting / running in its ``TaskomaticState`` search
attribute, and what it waits on, when it started and how it failed in its memo. A listing is
therefore one visibility query, with no call to each task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio.client import (
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from starter.errors import RequestError
from taskomatic.errors import error_info
from taskomatic.models import (
    Model,
    TaskFailure,
    TaskProgress,
    TaskState,
    VmTaskResult,
)
from taskomatic.temporal import (
    TASK_HOST,
    TASK_POOL,
    TASK_REQUESTED_BY,
    TASK_RESOURCES,
    TASK_STATE,
    TASK_VM,
)
from workflows.ordering import GRANTED_AT_SUBMIT

T = TypeVar("T")

_CLOSED: dict[WorkflowExecutionStatus, TaskState] = {
    WorkflowExecutionStatus.COMPLETED: "complete",
    WorkflowExecutionStatus.FAILED: "error",
    WorkflowExecutionStatus.TIMED_OUT: "error",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "cancelled",
}
_ENDINGS = {WorkflowExecutionStatus.TERMINATED: "Terminated",
            WorkflowExecutionStatus.CANCELED: "Cancelled",
            WorkflowExecutionStatus.TIMED_OUT: "TimedOut"}
# Visibility query of each state (closed states by execution status, open ones by attribute).
STATE_QUERIES: dict[TaskState, str] = {
    "complete": "ExecutionStatus = 'Completed'",
    "error": "(ExecutionStatus = 'Failed' OR ExecutionStatus = 'TimedOut')",
    "cancelled": "(ExecutionStatus = 'Canceled' OR ExecutionStatus = 'Terminated')",
    "new": f"ExecutionStatus = 'Running' AND {TASK_STATE.name} = 'new'",
    "waiting": f"ExecutionStatus = 'Running' AND {TASK_STATE.name} = 'waiting'",
    "running": f"ExecutionStatus = 'Running' AND ({TASK_STATE.name} = 'running'"
               f" OR {TASK_STATE.name} IS NULL)",
}


class TaskError(Exception):
    """A task that ended in error, cancellation or termination."""

    def __init__(self, failure: TaskFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class TaskStatus(Model):
    id: str
    kind: str
    state: TaskState
    resources: list[str] = []
    waiting_on: list[str] = []
    after: list[str] = []
    vm: str | None = None
    host: str | None = None
    pool: str | None = None
    requested_by: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: TaskFailure | None = None
    progress: TaskProgress | None = None
    result: Any = None


def failure_of(task_id: str, kind: str, err: BaseException) -> TaskFailure:
    cause = err.cause if isinstance(err, WorkflowFailureError) else err
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0],
                                                                             dict):
        try:
            return TaskFailure.model_validate(cause.details[0])
        except ValidationError:
            pass
    info = error_info(cause) if cause is not None else None
    message = info.message if info else str(err)
    return TaskFailure(task_id=task_id, kind=kind, step="-",
                       error_type=type(cause).__name__ if cause else "Unknown", message=message)


def _started_at_submission(execution: WorkflowExecution, memo: Mapping[str, Any],
                           state: TaskState) -> datetime | None:
    """When a task that never waited started: at its submission. Such a task (its resources
    granted at submission, patch ``i16-one-patch``) writes no ``started_at`` to its memo."""
    if memo.get(GRANTED_AT_SUBMIT) and state not in ("new", "waiting"):
        return execution.start_time
    return None


def status_of(execution: WorkflowExecution, memo: Mapping[str, Any]) -> TaskStatus:
    """A task's status from its visibility record and decoded memo."""
    attrs = execution.typed_search_attributes
    closed = _CLOSED.get(execution.status) if execution.status else None
    state: TaskState = closed or attrs.get(TASK_STATE) or "running"  # type: ignore[assignment]
    status = TaskStatus(
        id=execution.id, kind=execution.workflow_type, state=state,
        resources=list(attrs.get(TASK_RESOURCES) or memo.get("resources") or []),
        waiting_on=list(memo.get("waiting_on") or []) if state in ("new", "waiting") else [],
        after=list(memo.get("after") or []), vm=attrs.get(TASK_VM), host=attrs.get(TASK_HOST),
        pool=attrs.get(TASK_POOL),
        requested_by=attrs.get(TASK_REQUESTED_BY) or memo.get("requested_by"),
        submitted_at=execution.start_time, finished_at=execution.close_time,
        started_at=memo.get("started_at") or _started_at_submission(execution, memo, state),
    )
    error = memo.get("error")
    if closed in ("error", "cancelled"):
        ending = _ENDINGS.get(execution.status or WorkflowExecutionStatus.FAILED)
        status.error = TaskFailure(
            task_id=status.id, kind=status.kind, step=(error or {}).get("step", "-"),
            error_type=(error or {}).get("type", ending or "Unknown"),
            message=(error or {}).get("message", (ending or "failed").lower()))
    return status


class TaskHandle:
    """One submitted task."""

    def __init__(self, handle: WorkflowHandle[Any, Any], kind: str,
                 result_type: Callable[[str], type[Any] | None] | None = None) -> None:
        self._handle = handle
        self.id = handle.id
        self.kind = kind
        self._result_type = result_type

    async def result(self) -> Any:
        try:
            return await self._handle.result()
        except WorkflowFailureError as err:
            raise TaskError(failure_of(self.id, self.kind, err)) from None

    async def progress(self) -> TaskProgress | None:
        try:
            return await self._handle.query("progress", result_type=TaskProgress)  # type: ignore[no-any-return]
        except RPCError:
            return None

    async def watch(self, on_progress: Callable[[TaskProgress | None], None],
                    every_seconds: float = 0.2) -> Any:
        """Report the task's progress every ``every_seconds`` until it ends (a display refresh;
        the task itself is event-driven); returns its result or raises ``TaskError``."""
        waiter = asyncio.ensure_future(self.result())
        while not waiter.done():
            on_progress(await self.progress())
            await asyncio.wait([waiter], timeout=every_seconds)
        on_progress(await self.progress())
        return waiter.result()

    async def describe(self) -> TaskStatus:
        """The task's state, what it waits on, its steps and its result or error;
        ``RequestError`` (field ``id``) if there is no such task."""
        desc: WorkflowExecutionDescription = await no_such_task_is_refused(
            self.id, self._handle.describe())
        status = status_of(desc, await desc.memo())
        self.kind = self.kind or status.kind
        status.progress = await self.progress()
        if status.progress is not None and status.state in ("new", "waiting", "running"):
            status.waiting_on = status.progress.waiting_on
        if status.state == "complete":
            status.result = await self.result()
            model = self._result_type(status.kind) if self._result_type else None
            if model is not None and isinstance(status.result, dict):
                status.result = model.model_validate(status.result)
        elif status.state in ("error", "cancelled"):
            try:
                await self.result()
            except TaskError as err:
                status.error = err.failure
            except Exception as err:  # cancelled / terminated / timed out
                status.error = failure_of(self.id, self.kind, err)
        return status

    async def cancel(self) -> None:
        """Ask the task to stop: it undoes what it did and releases what it held;
        ``RequestError`` (field ``id``) if there is no such task."""
        await no_such_task_is_refused(self.id, self._handle.cancel())


async def no_such_task_is_refused(task_id: str, call: Awaitable[T]) -> T:
    """Await ``call`` (a Temporal call about the task ``task_id``); Temporal's "not found" (or
    an id it cannot take, such as an empty one) becomes ``RequestError`` naming ``id``."""
    try:
        return await call
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise RequestError("id", f"no task {task_id!r}") from None
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            raise RequestError("id", f"not a task id: {err.message} (got {task_id!r})") from None
        raise


__all__ = ["STATE_QUERIES", "TaskError", "TaskHandle", "TaskStatus", "VmTaskResult", "failure_of",
           "no_such_task_is_refused", "status_of"]
