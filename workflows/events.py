"""The workflow side of the audit log (``task_events``), adding no command per step.

``StepHeaders`` is a worker interceptor: every activity a runbook step or undo schedules carries
the ``taskomatic-step`` header (the step's name, whether it is an undo), read by the activity side
(``activities.events.AuditInterceptor``), which writes the events. Headers are not commands, so
histories replay unchanged. ``record_end`` is the task's one extra command: a local activity
recording its end (state, error), in tasks started since the patch ``i15-task-end``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

with workflow.unsafe.imports_passed_through():
    from activities.events import STEP_HEADER, AuditActivities
    from taskomatic.models import StepState
    from taskomatic.models.events import TaskEndInput

# Tasks started before the audit log recorded no end: their histories replay without it.
END_PATCH = "i15-task-end"

_END_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=5), maximum_attempts=8)


class StepHeaders(Interceptor):
    """Worker interceptor: puts the current runbook step on the activities it schedules."""

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput
                                   ) -> type[WorkflowInboundInterceptor]:
        return _StepHeadersInbound


class _StepHeadersInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_StepHeadersOutbound(outbound))


class _StepHeadersOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        about = _current_step()
        if about is not None:
            input.headers = {**input.headers, STEP_HEADER: Payload(
                metadata={"encoding": b"json/plain"}, data=json.dumps(about).encode())}
        return super().start_activity(input)


def _current_step() -> dict[str, Any] | None:
    """The step being started: the newest step of the task's progress while it is running (a
    step) or compensating (an undo). A runbook step begins its record and schedules its activity
    in one go, with no await between, so the newest record is this activity's step."""
    progress = getattr(workflow.instance(), "progress", None)
    steps = getattr(progress(), "steps", None) if callable(progress) else None
    if not steps or steps[-1].state not in (StepState.RUNNING, StepState.COMPENSATING):
        return None
    return {"step": steps[-1].name, "undo": steps[-1].state == StepState.COMPENSATING}


async def record_end(state: Literal["complete", "error", "cancelled"],
                     error: dict[str, Any] | None = None) -> None:
    """Record the task's end in the audit log (a local activity, retried for ~30 s). A log that
    cannot be written is logged and does not change how the task ends."""
    info = workflow.info()
    try:
        await workflow.execute_local_activity_method(
            AuditActivities.record_task_end,
            TaskEndInput(task_id=info.workflow_id, run_id=info.run_id,
                         task_kind=info.workflow_type, state=state, error=error),
            start_to_close_timeout=timedelta(seconds=10), retry_policy=_END_RETRY)
    except ActivityError as err:
        workflow.logger.warning("the task's end was not recorded in the audit log: %s", err)
