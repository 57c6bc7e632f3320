"""Inventory activities of the host tasks and of moves: maintenance and host state transitions,
the destination of a move, the VMs a host had (restore) and the clear-host plan (dry run); one
transaction each."""

from __future__ import annotations

from temporalio import activity

from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    BeginMaintenanceResult,
    HostInfo,
    HostNameInput,
    HostStateResult,
    MovePlan,
    MoveReservation,
    OriginVmsInput,
    PlanInput,
    ReserveCapacityInput,
    SetHostStateInput,
    VmNames,
)


class HostActivities:
    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def reserve_destination(self, inp: ReserveCapacityInput) -> MoveReservation:
        """Reserve room for an existing VM on the host it moves to (placement unless pinned),
        with what the move needs of its disks' storage."""
        res = inventory.reserve_capacity(self.db, inp, moving=True)
        host = inventory.get_host(self.db, res.host)
        get_logger(vm=inp.vm_name, host=res.host).info("destination reserved", vcpus=res.vcpus,
                                                       memory_mib=res.memory_mib)
        return MoveReservation(**res.model_dump(),
                               migration_uri=host.migration_uri if host else None,
                               storage=inventory.move_storage(self.db, inp.vm_name, res.host,
                                                              inp.copy_storage))

    @activity.defn
    def host_ref(self, inp: HostNameInput) -> HostInfo:
        host = inventory.get_host(self.db, inp.host)
        if host is None:
            raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.host!r}", field="host",
                             host=inp.host)
        return HostInfo(name=host.name, uri=host.uri, migration_uri=host.migration_uri,
                        state=host.state)

    @activity.defn
    def begin_maintenance(self, inp: HostNameInput) -> BeginMaintenanceResult:
        res = inventory.begin_maintenance(self.db, inp.host)
        get_logger(host=inp.host).info("maintenance", detail=res.detail)
        return res

    @activity.defn
    def set_host_state(self, inp: SetHostStateInput) -> HostStateResult:
        """Apply one host transition of ``taskomatic.states`` (idempotent)."""
        res = inventory.set_host_state(self.db, inp.host, inp.transition)
        get_logger(host=inp.host).info("host state", detail=res.detail)
        return res

    @activity.defn
    def vms_with_origin(self, inp: OriginVmsInput) -> VmNames:
        return VmNames(names=inventory.vms_with_origin(self.db, inp.host, inp.exclude))

    @activity.defn
    def plan_moves(self, inp: PlanInput) -> MovePlan:
        """The clear-host dry run: ``placement.plan`` over the hosts' load now, without locks."""
        return MovePlan(moves=inventory.plan_moves(self.db, inp.host, inp.vms,
                                                             inp.copy_storage))
