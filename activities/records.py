"""Inventory activities: the plan and finalize phases' database steps, one transaction each."""

from __future__ import annotations

from temporalio import activity

from activities import inventory
from activities.db import Database
from taskomatic.errors import ErrorType, task_error
from taskomatic.logs import get_logger
from taskomatic.models import (
    InventoryResult,
    LookupVmInput,
    RecordVmInput,
    ReleaseCapacityInput,
    ReleaseResult,
    RemoveVmInput,
    Reservation,
    ReserveCapacityInput,
    SetVmStateInput,
    VmPlacement,
    VmRecord,
)


class InventoryActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def reserve_capacity(self, inp: ReserveCapacityInput) -> Reservation:
        res = inventory.reserve_capacity(self.db, inp)
        get_logger(vm=inp.vm_name, host=res.host).info(
            "capacity reserved", vcpus=res.vcpus, memory_mib=res.memory_mib)
        return res

    @activity.defn
    def release_capacity(self, inp: ReleaseCapacityInput) -> ReleaseResult:
        res = inventory.release_capacity(self.db, inp.task_id)
        detail = (f"released {res.vcpus} vCPUs / {res.memory_mib} MiB on {res.host}" if res
                  else "no reservation held")
        get_logger().info("capacity release", detail=detail)
        return ReleaseResult(released=res is not None, detail=detail)

    @activity.defn
    def lookup_vm(self, inp: LookupVmInput) -> VmPlacement:
        found = inventory.get_vm(self.db, inp.name)
        if found is None:
            raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {inp.name!r}", field="name",
                             vm=inp.name)
        return found

    @activity.defn
    def record_vm(self, inp: RecordVmInput) -> VmRecord:
        vm = inventory.record_vm(self.db, inp)
        get_logger(vm=vm.name, host=vm.host).info("VM recorded", state=vm.state)
        return vm

    @activity.defn
    def set_vm_state(self, inp: SetVmStateInput) -> InventoryResult:
        changed = inventory.set_vm_state(self.db, inp.name, inp.state)
        detail = f"state {inp.state}" if changed else f"state already {inp.state}"
        get_logger(vm=inp.name).info("VM state", detail=detail)
        return InventoryResult(changed=changed, detail=detail)

    @activity.defn
    def remove_vm(self, inp: RemoveVmInput) -> InventoryResult:
        changed = inventory.remove_vm(self.db, inp.name)
        detail = "removed from inventory" if changed else "already absent from inventory"
        get_logger(vm=inp.name).info(detail)
        return InventoryResult(changed=changed, detail=detail)
