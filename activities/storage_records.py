"""Storage inventory activities: the plan and finalize steps of pool, volume and disk tasks."""

from __future__ import annotations

from temporalio import activity

from activities import storage_inventory as inv
from activities.db import Database
from taskomatic.logs import get_logger
from taskomatic.storage import (
    PoolAutostartInput,
    PoolNameInput,
    PoolPlacement,
    PoolRecord,
    RecordPoolInput,
    RecordVolumeInput,
    ReservePoolInput,
    StorageResult,
    VolumeNameInput,
    VolumePlacement,
    VolumeRecord,
)
from taskomatic.vm_disks import (
    DiskPlan,
    PlanDisksInput,
    RecordVmDisksInput,
    ReleaseVmVolumesInput,
    VmDisks,
    VmIdentity,
    VmNameInput,
)


def _result(changed: bool, detail: str, **where: str) -> StorageResult:
    get_logger(**where).info(detail, changed=changed)
    return StorageResult(changed=changed, detail=detail)


class StorageInventoryActivities:
    def __init__(self, db: Database, pool_roots: list[str]) -> None:
        self.db = db
        self.pool_roots = pool_roots

    # --- pools -----------------------------------------------------------------------------

    @activity.defn
    def reserve_pool(self, inp: ReservePoolInput) -> PoolPlacement:
        """Validate a new pool against this worker's ``pool_roots`` and hold its name."""
        return inv.reserve_pool(self.db, inp.task_id, inp.request, self.pool_roots)

    @activity.defn
    def release_pool(self, inp: PoolNameInput) -> StorageResult:
        released = inv.release_pool(self.db, str(inp.task_id))
        return _result(released, "pool name released" if released else "no pool name held",
                       pool=inp.name)

    @activity.defn
    def lookup_pool(self, inp: PoolNameInput) -> PoolPlacement:
        return inv.require_pool(self.db, inp.name)

    @activity.defn
    def check_pool_unused(self, inp: PoolNameInput) -> PoolPlacement:
        return inv.check_pool_unused(self.db, inp.name)

    @activity.defn
    def record_pool(self, inp: RecordPoolInput) -> PoolRecord:
        return inv.record_pool(self.db, inp.scan)

    @activity.defn
    def record_pool_autostart(self, inp: PoolAutostartInput) -> StorageResult:
        changed = inv.set_pool_autostart(self.db, inp.name, inp.autostart)
        word = "on" if inp.autostart else "off"
        return _result(changed, f"autostart {word}" if changed else f"autostart already {word}",
                       pool=inp.name)

    @activity.defn
    def remove_pool(self, inp: PoolNameInput) -> StorageResult:
        removed = inv.remove_pool(self.db, inp.name)
        return _result(removed, "removed from inventory" if removed
                       else "already absent from inventory", pool=inp.name)

    # --- volumes ---------------------------------------------------------------------------

    @activity.defn
    def check_new_volume(self, inp: VolumeNameInput) -> PoolPlacement:
        return inv.check_new_volume(self.db, inp.pool, inp.name, inp.clone_from)

    @activity.defn
    def lookup_volume(self, inp: VolumeNameInput) -> VolumePlacement:
        return inv.require_volume(self.db, inp.pool, inp.name)

    @activity.defn
    def check_volume_unused(self, inp: VolumeNameInput) -> VolumePlacement:
        return inv.check_volume_unused(self.db, inp.pool, inp.name)

    @activity.defn
    def record_volume(self, inp: RecordVolumeInput) -> VolumeRecord:
        return inv.record_volume(self.db, inp.pool, inp.volume, inp.owner_vm)

    @activity.defn
    def remove_volume(self, inp: VolumeNameInput) -> StorageResult:
        removed = inv.remove_volume(self.db, inp.pool, inp.name)
        return _result(removed, "removed from inventory" if removed
                       else "already absent from inventory", pool=inp.pool, volume=inp.name)

    # --- the disks of VMs ------------------------------------------------------------------

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
        return _result(count > 0, f"{count} owned volume(s) {verb}", vm=inp.vm)

    @activity.defn
    def unrecord_vm(self, inp: VmIdentity) -> StorageResult:
        removed = inv.unrecord_vm(self.db, inp.vm, inp.uuid)
        return _result(removed, "removed from inventory" if removed
                       else "not recorded (or another VM of that name); left alone", vm=inp.vm)

    def all(self) -> list[object]:
        return [self.reserve_pool, self.release_pool, self.lookup_pool, self.check_pool_unused,
                self.record_pool, self.record_pool_autostart, self.remove_pool,
                self.check_new_volume, self.lookup_volume, self.check_volume_unused,
                self.record_volume, self.remove_volume, self.plan_disks, self.record_vm_disks,
                self.lookup_vm_disks, self.release_vm_volumes, self.unrecord_vm]
