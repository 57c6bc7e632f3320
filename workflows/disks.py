"""The disk steps of the VM tasks: plan, create, record, look up and delete a VM's volumes.

A helper object the tasks that create and destroy VMs make in ``__init__``
(``self.disks = DiskSteps(self)``). The steps run only for VMs with disks, behind the ``vm-disks``
patch, so histories recorded before disks existed replay unchanged.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.disks import DiskActivities
    from activities.storage import StorageActivities
    from taskomatic.errors import ErrorType
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

from workflows.runbook import DATABASE, Runbook, TaskFailed, Undo

DISKS_PATCH = "vm-disks"
# A new volume's undo is dropped when its create step fails on a different volume of that name
# (DuplicateVolume): that volume was there before the task, which must not delete it.
KEEP_FOREIGN_VOLUME_PATCH = "keep-foreign-volume"
Storage = StorageActivities
Disks = DiskActivities


def disk_specs(plan: DiskPlan | None) -> list[DiskSpec]:
    """The disks of the domain to define for ``plan`` (none without a plan)."""
    return [DiskSpec(pool=d.pool, volume=d.volume, format=d.format, target=d.target)
            for d in (plan.disks if plan else [])]


class DiskSteps:
    """Steps on a VM's volumes, run as steps of ``task``."""

    def __init__(self, task: Runbook) -> None:
        self._task = task

    async def plan(self, req: CreateVmRequest) -> DiskPlan:
        """Which pool and volume each requested disk uses, and which volumes are new."""
        plan: DiskPlan = await self._task.step(
            "plan disks", Disks.plan_disks,
            PlanDisksInput(vm=req.name, host=req.host, disks=req.disks), options=DATABASE)
        return plan

    async def create_volumes(self, plan: DiskPlan) -> list[VolumeInfo]:
        """Create the VM's new volumes, each deleted again if the task fails later (but not one
        whose create failed on a different volume of its name: that one is not the task's)."""
        created: list[VolumeInfo] = []
        for disk in plan.disks:
            if not disk.new or disk.capacity is None:
                continue
            spec = VolumeSpec(host=disk.host, uri=disk.host_uri, pool=disk.pool,
                              name=disk.volume, capacity=disk.capacity, format=disk.format)
            undo = Undo(f"delete volume {disk.pool}/{disk.volume}", Storage.delete_volume,
                        spec.ref())
            try:
                made: VolumeReport = await self._task.step(
                    f"create volume {disk.pool}/{disk.volume}", Storage.create_volume, spec,
                    undo=undo)
            except TaskFailed as failed:
                if (failed.info.type == ErrorType.DUPLICATE_VOLUME
                        and workflow.patched(KEEP_FOREIGN_VOLUME_PATCH)):
                    self._task.undo.drop(undo)
                raise
            if made.volume is not None:
                created.append(made.volume)
        return created

    @staticmethod
    def unrecord_undo(vm: str, uuid: str) -> Undo:
        """The undo of recording VM ``vm`` (``uuid``) with its disks."""
        return Undo("remove from inventory", Disks.unrecord_vm,
                    VmIdentity(vm=vm, uuid=uuid), DATABASE)

    async def record(self, vm: str, plan: DiskPlan, created: list[VolumeInfo]) -> None:
        """Record the VM's disks and the volumes created for it (owned by the VM)."""
        await self._task.step("record disks", Disks.record_vm_disks,
                              RecordVmDisksInput(vm=vm, disks=plan.disks, created=created),
                              options=DATABASE)

    async def lookup(self, vm: str) -> VmDisks:
        """The VM's disks as recorded, each marked whether the VM owns its volume."""
        disks: VmDisks = await self._task.step("look up disks", Disks.lookup_vm_disks,
                                               VmNameInput(vm=vm), options=DATABASE)
        return disks

    async def delete_owned_volumes(self, disks: VmDisks) -> list[str]:
        """Delete the volumes the VM owns; a note per volume."""
        notes = []
        for disk in disks.disks:
            if disk.owned:
                gone: VolumeReport = await self._task.step(
                    f"delete volume {disk.pool}/{disk.volume}", Storage.delete_volume, disk.ref())
                notes.append(f"{disk.pool}/{disk.volume} {gone.detail}")
        return notes

    async def release_volumes(self, vm: str, keep: bool) -> str:
        """After the VM is gone: forget its owned volumes in the inventory (deleted), or with
        ``keep`` keep them ownerless; returns a note."""
        released: StorageResult = await self._task.step(
            "keep owned volumes" if keep else "forget owned volumes",
            Disks.release_vm_volumes, ReleaseVmVolumesInput(vm=vm, keep=keep),
            options=DATABASE)
        return released.detail
