"""Moving one VM to another host: ``MigrateVm`` (``taskomatic vm migrate NAME [--to HOST]``).

MigrateVm's runbook: look up the VM → check libvirt has it on its host → move it with the
``Mover`` (``workflows.move_steps``): reserve room on the destination (placement unless pinned) →
migrate (live, offline or cold, slots held) → confirm where it runs and record it, in one step;
another host is tried if an attempt fails (``DestinationAttempts``).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.migration import MigrationActivities
    from taskomatic.errors import ErrorInfo, ErrorType
    from taskomatic.models import (
        HostRef,
        LocateDomainInput,
        MigrateVmRequest,
        VmTaskResult,
    )

from workflows.move_steps import Mover, source_of
from workflows.runbook import Runbook, TaskFailed
from workflows.vm_steps import VmSteps

Moves = MigrationActivities


@workflow.defn(name="MigrateVm")
class MigrateVm(Runbook):
    """Move one VM to another host (see the module's runbook)."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.mover = Mover(self)

    @workflow.run
    async def run(self, req: MigrateVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._migrate(req))

    async def _migrate(self, req: MigrateVmRequest) -> VmTaskResult:
        found, _ref = await self.vm.locate(req.name)
        vm = found.vm
        if req.from_host is not None and vm.host != req.from_host:
            return self.vm.result(vm.name, vm.host, vm.state, [f"already off {req.from_host}"],
                                  vm.uuid)
        self.phase("run")
        # A clear-host child skips the check: its parent has just listed the VM there in libvirt.
        if req.from_host is None:
            await self._check_on_source(vm.name, source_of(found))
        moved = await self.mover.move(found, to=req.to, limits=req.limits,
                                      copy_storage=req.copy_storage)
        notes = [moved.report.detail, moved.here.detail, *moved.notes]
        if len(moved.tried) > 1:
            notes.append(f"tried {', '.join(moved.tried)}")
        return self.vm.result(vm.name, moved.here.host, moved.here.state, notes, vm.uuid)

    async def _check_on_source(self, name: str, source: HostRef) -> None:
        there = await self.step("check the VM is on its host", Moves.locate_domain,
                                LocateDomainInput(name=name, hosts=[source],
                                                  recover_on=source.name))
        if there.host is None:
            raise TaskFailed(ErrorInfo(type=ErrorType.DOMAIN_NOT_FOUND, vm=name,
                                       host=source.name, message=f"libvirt has no {name} on "
                                                                 f"{source.name}"),
                             "check the VM is on its host")
