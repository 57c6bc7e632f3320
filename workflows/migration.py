"""``MigrateVm``: move one VM to another host (``taskomatic vm migrate NAME [--to HOST]``).

Runbook: look up the VM → check libvirt has it on its host → reserve room on the destination
(placement unless pinned) → migrate (live, offline or cold, slots held) → confirm where it runs
and record it, in one step. A failed attempt is verified (the VM must still be on the source), its
reservation released and another host tried, at most three in all.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.migration import MigrationActivities
    from taskomatic.errors import ErrorInfo, ErrorType
    from taskomatic.models import HostRef, LocateDomainInput, MigrateVmRequest, VmTaskResult

from workflows.runbook import TaskFailed
from workflows.vms import VmTask

Moves = MigrationActivities


@workflow.defn(name="MigrateVm")
class MigrateVm(VmTask):
    KIND = "MigrateVm"

    @workflow.run
    async def run(self, req: MigrateVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._migrate(req))

    async def _migrate(self, req: MigrateVmRequest) -> VmTaskResult:
        found, _ref = await self.locate(req.name)
        vm = found.vm
        if req.from_host is not None and vm.host != req.from_host:
            return self.result(vm.name, vm.host, vm.state, [f"already off {req.from_host}"],
                               vm.uuid)
        self.phase("run")
        # A clear-host child skips the check: its parent has just listed the VM there in libvirt.
        if req.from_host is None:
            await self._check_on_source(vm.name, HostRef(
                name=vm.host, uri=found.host_uri, migration_uri=found.host_migration_uri))
        here, report, _dest, tried = await self.move(found, to=req.to, limits=req.limits)
        notes = [report.detail, here.detail]
        if len(tried) > 1:
            notes.append(f"tried {', '.join(tried)}")
        return self.result(vm.name, here.host, here.state, notes, vm.uuid)

    async def _check_on_source(self, name: str, source: HostRef) -> None:
        there = await self.step("check the VM is on its host", Moves.locate_domain,
                                LocateDomainInput(name=name, hosts=[source],
                                                  recover_on=source.name))
        if there.host is None:
            raise TaskFailed(ErrorInfo(type=ErrorType.DOMAIN_NOT_FOUND, vm=name,
                                       host=source.name, message=f"libvirt has no {name} on "
                                                                 f"{source.name}"),
                             "check the VM is on its host")
