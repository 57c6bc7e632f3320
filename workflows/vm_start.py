"""Start a VM (a VM lifecycle task; see ``workflows.vms`` for why each has a module)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import DomainActivities
    from taskomatic.models import (
        DomainRef,
        DomainReport,
        HostState,
        MigrationLimits,
        StartVmRequest,
        VmState,
        VmTaskResult,
    )

from workflows.move_steps import Mover
from workflows.runbook import Runbook
from workflows.vm_steps import VmSteps

Domains = DomainActivities

# StartVm moves a shut-off VM off a host that left service before starting it (placement at run
# time); histories recorded before that change replay without the move.
MOVE_OFF_UNAVAILABLE_HOST = "start-moves-off-unavailable-host"
_STAYS = (None, HostState.UP)


@workflow.defn(name="StartVm")
class StartVm(Runbook):
    """Start a VM, first moving it off its host if that host left service."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.mover = Mover(self)

    @workflow.run
    async def run(self, req: StartVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._start(req))

    async def _start(self, req: StartVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        if (found.host_state not in _STAYS and found.vm.state != VmState.RUNNING
                and workflow.patched(MOVE_OFF_UNAVAILABLE_HOST)):
            self.phase("run")
            self.log("host not in service; moving first", host_state=found.host_state)
            moved = await self.mover.move(found, to=None, limits=MigrationLimits())
            dest = moved.destination
            self.on_host(dest.name)
            ref = DomainRef(host=dest.name, uri=dest.uri, name=req.name)
        self.phase("run")
        started: DomainReport = await self.step("start domain", Domains.start_domain, ref)
        state = started.state or VmState.RUNNING
        await self.vm.record_state(req.name, state)
        return self.vm.result(req.name, ref.host, state, [started.detail], found.vm.uuid)

