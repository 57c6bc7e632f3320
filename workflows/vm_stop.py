"""Stop a VM (a VM lifecycle task; see ``workflows.vms`` for why each has a module)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import DomainActivities
    from taskomatic.models import (
        DomainReport,
        StopVmRequest,
        VmState,
        VmTaskResult,
        WaitShutoffInput,
    )

from workflows.cancels import CANCEL_HEARTBEAT
from workflows.runbook import HYPERVISOR, ActivityOptions, Runbook
from workflows.vm_steps import VmSteps

Domains = DomainActivities

# Default graceful-shutdown wait when neither the request nor the starter set one.
DEFAULT_STOP_TIMEOUT_SECONDS = 60.0


@workflow.defn(name="StopVm")
class StopVm(Runbook):
    """Stop a VM: ask the guest to shut down and wait, then power off (at once with ``force``)."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)

    @workflow.run
    async def run(self, req: StopVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._stop(req))

    async def _stop(self, req: StopVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        self.phase("run")
        notes: list[str] = []
        if not req.force:
            asked: DomainReport = await self.step("request shutdown", Domains.shutdown_domain, ref)
            notes.append(asked.detail)
            timeout = req.timeout_seconds or DEFAULT_STOP_TIMEOUT_SECONDS
            waited: DomainReport = await self.step(
                "wait for shutoff", Domains.wait_domain_shutoff,
                WaitShutoffInput(**ref.model_dump(), timeout_seconds=timeout),
                options=ActivityOptions(start_to_close=timedelta(seconds=timeout + 60),
                                        retry=HYPERVISOR.retry,
                                        heartbeat=CANCEL_HEARTBEAT if self.cancel_safe
                                        else timedelta(seconds=15)))
            notes.append(waited.detail)
            if waited.state in (VmState.SHUTOFF, VmState.CRASHED):
                await self.vm.record_state(req.name, VmState.SHUTOFF)
                return self.vm.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)
        forced: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        notes.append(forced.detail)
        await self.vm.record_state(req.name, VmState.SHUTOFF)
        return self.vm.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)

