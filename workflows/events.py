"""The workflow side of the audit log (``task_events``), adding no command to any task.

``StepHeaders`` is a worker interceptor: every activity a runbook step or undo schedules carries
the ``taskomatic-step`` header (the step's name, whether it is an undo), read by the activity side
(``activities.events.AuditInterceptor``), which writes the events. Headers are not commands, so
histories replay unchanged; with encryption on they are encrypted like every payload (the
client's ``header_codec_behavior``, ``taskomatic.temporal.connect_temporal``).
"""

from __future__ import annotations

import json
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

with workflow.unsafe.imports_passed_through():
    from activities.events import STEP_HEADER
    from taskomatic.models import StepState


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

