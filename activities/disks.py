"""Activities of the disks of VMs: plan a new VM's disks, record which VM uses or owns which
volume, and forget them again; one inventory transaction each (the volumes themselves are made and
deleted by ``activities.storage``)."""

from __future__ import annotations

from temporalio import activity

from activities.storage import storage_result
from taskomatic import inventory as inv
from taskomatic.inventory.db import Database
from taskomatic.models import (
    DiskPlan,
    PlanDisksInput,
    RecordVmDisksInput,
    ReleaseVmVolumesInput,
    StorageResult,
    SwitchDisksInput,
    VmDisks,
    VmIdentity,
    VmNameInput,
)


class DiskActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def plan_disks(self, inp: PlanDisksInput) -> DiskPlan:
        return inv.plan_disks(self.db, inp)

    @activity.defn
    def record_vm_disks(self, inp: RecordVmDisksInput) -> VmDisks:
        return inv.record_vm_disks(self.db, inp)

    @activity.defn
    def lookup_vm_disks(self, inp: VmNameInput) -> VmDisks:
        return inv.vm_disks(self.db, inp.vm)

    @activity.defn
    def release_vm_volumes(self, inp: ReleaseVmVolumesInput) -> StorageResult:
        count = inv.release_vm_volumes(self.db, inp.vm, inp.keep)
        verb = "kept (no longer owned)" if inp.keep else "forgotten"
        return storage_result(count > 0, f"{count} owned volume(s) {verb}", vm=inp.vm)

    @activity.defn
    def switch_vm_disks(self, inp: SwitchDisksInput) -> VmDisks:
        """After a move with a storage copy: the VM's disks point at the copies
        (``inventory.switch_vm_disks``)."""
        return inv.switch_vm_disks(self.db, inp)

    @activity.defn
    def unrecord_vm(self, inp: VmIdentity) -> StorageResult:
        removed = inv.unrecord_vm(self.db, inp.vm, inp.uuid)
        return storage_result(removed, "removed from inventory" if removed
                              else "not recorded (or another VM of that name); left alone",
                              vm=inp.vm)

    def all(self) -> list[object]:
        return [self.plan_disks, self.record_vm_disks, self.lookup_vm_disks,
                self.release_vm_volumes, self.switch_vm_disks, self.unrecord_vm]
