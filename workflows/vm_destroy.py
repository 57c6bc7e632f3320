"""Destroy a VM (a VM lifecycle task; see ``workflows.vms`` for why each has a module)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import DomainActivities, InventoryActivities
    from taskomatic.models import (
        DestroyVmRequest,
        DomainReport,
        InventoryResult,
        RemoveVmInput,
        VmTaskResult,
    )

from workflows.disks import DISKS_PATCH, DiskSteps
from workflows.runbook import DATABASE, Runbook
from workflows.vm_steps import VmSteps

Inventory = InventoryActivities
Domains = DomainActivities


@workflow.defn(name="DestroyVm")
class DestroyVm(Runbook):
    """Destroy a VM: power off, undefine, delete the volumes it owns (unless kept), forget it."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.disks = DiskSteps(self)

    @workflow.run
    async def run(self, req: DestroyVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._destroy(req))

    async def _destroy(self, req: DestroyVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        disks = await self.disks.lookup(req.name) if self.patched(DISKS_PATCH) else None
        self.phase("run")
        off: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        gone: DomainReport = await self.step("undefine domain", Domains.undefine_domain, ref)
        notes = [off.detail, gone.detail]
        if disks and not req.keep_disks:
            notes += await self.disks.delete_owned_volumes(disks)
        self.phase("finalize")
        owned = bool(disks and any(d.owned for d in disks.disks))
        removed: InventoryResult = await self.step(
            "remove from inventory and release capacity", Inventory.remove_vm,
            RemoveVmInput(name=req.name), options=DATABASE, last=not owned)
        notes.append(removed.detail)
        if owned:
            notes.append(await self.disks.release_volumes(req.name, keep=req.keep_disks))
        return self.vm.result(req.name, ref.host, None, notes, found.vm.uuid)
