"""A task kind for ordering tests: it holds named resources until told to finish.

It is a real Runbook task (same waiting, claiming and releasing as every task), whose body does
no libvirt work: it records when it ran and, with ``hold``, waits for a ``finish`` signal, so a
test decides how long a resource stays taken.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import Field

    from taskomatic.errors import ErrorInfo, ErrorType
    from taskomatic.models import Model, TaskRequest

from workflows.runbook import Runbook, TaskFailed


class HoldRequest(TaskRequest):
    names: list[str] = Field(default_factory=list)
    hold: bool = False
    fail: bool = False

    def resources(self) -> list[str]:
        return list(self.names)


class HoldResult(Model):
    task_id: str
    ran_at: str
    finished_at: str


@workflow.defn(name="HoldResources")
class HoldResources(Runbook):
    def __init__(self) -> None:
        super().__init__()
        self._finish = False

    @workflow.signal
    def finish(self) -> None:
        self._finish = True

    @workflow.run
    async def run(self, req: HoldRequest) -> HoldResult:
        return await self.perform(req, lambda: self._hold(req))

    async def _hold(self, req: HoldRequest) -> HoldResult:
        ran_at = workflow.now().isoformat()
        self.begin("hold")
        if req.hold:
            await workflow.wait_condition(lambda: self._finish)
        if req.fail:
            raise TaskFailed(ErrorInfo(type=ErrorType.INVALID_OPERATION, message="told to fail"),
                             "hold")
        return HoldResult(task_id=workflow.info().workflow_id, ran_at=ran_at,
                          finished_at=workflow.now().isoformat())
