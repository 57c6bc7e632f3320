"""The disk steps of the VM tasks: plan, create, record, look up and delete a VM's volumes.

They run only for VMs with disks, behind the ``vm-disks`` patch, so histories recorded before
disks existed replay unchanged.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.disks import DiskActivities
    from activities.storage import StorageActivities
    from taskomatic.models import (
        CreateVmRequest,
        DiskPlan,
        DiskSpec,
        PlanDisksInput,
        RecordVmDisksInput,
        ReleaseVmVolumesInput,
        StorageResult,
        VmDisks,
        VmIdentity,
        VmNameInput,
        VolumeInfo,
        VolumeReport,
        VolumeSpec,
    )

from workflows.runbook import DATABASE, Runbook, Undo

DISKS_PATCH = "vm-disks"
Storage = StorageActivities
Disks = DiskActivities


def disk_specs(plan: DiskPlan | None) -> list[DiskSpec]:
    return [DiskSpec(pool=d.pool, volume=d.volume, format=d.format, target=d.target)
            for d in (plan.disks if plan else [])]


class VmDiskSteps(Runbook):
    async def plan_disks(self, req: CreateVmRequest) -> DiskPlan:
        plan: DiskPlan = await self.step(
            "plan disks", Disks.plan_disks,
            PlanDisksInput(vm=req.name, host=req.host, disks=req.disks), options=DATABASE)
        return plan

    async def create_volumes(self, plan: DiskPlan) -> list[VolumeInfo]:
        """Create the VM's new volumes, each deleted again if the task fails later."""
        created: list[VolumeInfo] = []
        for disk in plan.disks:
            if not disk.new or disk.capacity is None:
                continue
            spec = VolumeSpec(host=disk.host, uri=disk.host_uri, pool=disk.pool,
                              name=disk.volume, capacity=disk.capacity, format=disk.format)
            made: VolumeReport = await self.step(
                f"create volume {disk.pool}/{disk.volume}", Storage.create_volume, spec,
                undo=Undo(f"delete volume {disk.pool}/{disk.volume}", Storage.delete_volume,
                          spec.ref()))
            if made.volume is not None:
                created.append(made.volume)
        return created

    def unrecord_undo(self, vm: str, uuid: str) -> Undo:
        return Undo("remove from inventory", Disks.unrecord_vm,
                    VmIdentity(vm=vm, uuid=uuid), DATABASE)

    async def record_disks(self, vm: str, plan: DiskPlan, created: list[VolumeInfo]) -> None:
        await self.step("record disks", Disks.record_vm_disks,
                        RecordVmDisksInput(vm=vm, disks=plan.disks, created=created),
                        options=DATABASE)

    async def lookup_disks(self, vm: str) -> VmDisks:
        disks: VmDisks = await self.step("look up disks", Disks.lookup_vm_disks,
                                         VmNameInput(vm=vm), options=DATABASE)
        return disks

    async def delete_owned_volumes(self, disks: VmDisks) -> list[str]:
        notes = []
        for disk in disks.disks:
            if disk.owned:
                gone: VolumeReport = await self.step(
                    f"delete volume {disk.pool}/{disk.volume}", Storage.delete_volume, disk.ref())
                notes.append(f"{disk.pool}/{disk.volume} {gone.detail}")
        return notes

    async def release_volumes(self, vm: str, keep: bool) -> str:
        released: StorageResult = await self.step(
            "keep owned volumes" if keep else "forget owned volumes",
            Disks.release_vm_volumes, ReleaseVmVolumesInput(vm=vm, keep=keep),
            options=DATABASE)
        return released.detail
