"""VM activities: the inventory steps of the VM tasks (one transaction each) and the libvirt
domain actions (one libvirt action each).

Every one is idempotent: it looks at what the database or the hypervisor has before acting, so a
repeated call (Temporal runs activities at least once) finds the work done and says so instead of
failing; libvirt errors leave as typed errors.
"""


from __future__ import annotations

import time

import libvirt
from temporalio import activity

from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors, lookup, power_state
from taskomatic.hypervisor.domain_xml import build_domain_xml, shape_of
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    DomainRef,
    DomainReport,
    DomainSpec,
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
    VmState,
    WaitShutoffInput,
)

_OFF = {VmState.SHUTOFF, VmState.CRASHED}


def _report(ref: DomainRef, state: VmState | None, changed: bool, detail: str) -> DomainReport:
    get_logger(vm=ref.name, host=ref.host).info(detail, changed=changed, state=state)
    return DomainReport(name=ref.name, host=ref.host, state=state, changed=changed, detail=detail)


class DomainActivities:
    """Activities on libvirt domains, sharing the worker's connections."""

    def __init__(self, hypervisors: Hypervisors) -> None:
        self.hv = hypervisors

    @activity.defn
    def define_domain(self, spec: DomainSpec) -> DomainReport:
        with self.hv.call("define", spec.uri, spec.host, spec.name) as conn:
            dom = lookup(conn, spec.name)
            if dom is not None:
                uuid, vcpus, memory = shape_of(dom.XMLDesc())
                if uuid != spec.uuid:
                    raise task_error(ErrorType.DUPLICATE_DOMAIN,
                                     f"a different domain {spec.name!r} (uuid {uuid}) already "
                                     f"exists on {spec.host}", field="name", host=spec.host,
                                     vm=spec.name)
                if (vcpus, memory) == (spec.vcpus, spec.memory_mib):
                    return _report(spec, power_state(dom), False,
                                   "already defined with the same definition")
            existed = dom is not None
            dom = conn.defineXML(build_domain_xml(spec))
            return _report(spec, power_state(dom), True,
                           "redefined with a new shape" if existed else "defined")

    @activity.defn
    def undefine_domain(self, ref: DomainRef) -> DomainReport:
        """Remove a domain's definition, powering it off first if it runs."""
        with self.hv.call("undefine", ref.uri, ref.host, ref.name) as conn:
            dom = lookup(conn, ref.name)
            if dom is None:
                return _report(ref, None, False, "already absent")
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            return _report(ref, None, True, "undefined")

    @activity.defn
    def start_domain(self, ref: DomainRef) -> DomainReport:
        with self.hv.call("start", ref.uri, ref.host, ref.name) as conn:
            dom = self._require(conn, ref)
            if dom.isActive():
                return _report(ref, power_state(dom), False, "already running")
            dom.create()
            return _report(ref, power_state(dom), True, "started")

    @activity.defn
    def shutdown_domain(self, ref: DomainRef) -> DomainReport:
        """Ask the guest to shut down (ACPI); see ``wait_domain_shutoff``."""
        with self.hv.call("shutdown", ref.uri, ref.host, ref.name) as conn:
            dom = self._require(conn, ref)
            if not dom.isActive():
                return _report(ref, power_state(dom), False, "already shut off")
            dom.shutdown()
            return _report(ref, power_state(dom), True, "graceful shutdown requested")

    @activity.defn
    def wait_domain_shutoff(self, inp: WaitShutoffInput) -> DomainReport:
        """Wait until the domain is off or the timeout passes, heartbeating; never forces."""
        deadline = time.monotonic() + inp.timeout_seconds
        with self.hv.call("wait for shutoff of", inp.uri, inp.host, inp.name) as conn:
            dom = self._require(conn, inp)
            while True:
                state = power_state(dom)
                if state in _OFF:
                    return _report(inp, state, False, "shut off")
                left = deadline - time.monotonic()
                if left <= 0:
                    return _report(inp, state, False,
                                   f"still {state} after {inp.timeout_seconds:g}s")
                activity.heartbeat(f"{state}, {left:.0f}s left")
                time.sleep(min(0.2, left))

    @activity.defn
    def destroy_domain(self, ref: DomainRef) -> DomainReport:
        """Power a domain off at once. Absent or already off is a no-op."""
        with self.hv.call("destroy", ref.uri, ref.host, ref.name) as conn:
            dom = lookup(conn, ref.name)
            if dom is None:
                return _report(ref, None, False, "absent; nothing to power off")
            if not dom.isActive():
                return _report(ref, power_state(dom), False, "already shut off")
            dom.destroy()
            return _report(ref, power_state(dom), True, "powered off")

    def _require(self, conn: libvirt.virConnect, ref: DomainRef) -> libvirt.virDomain:
        dom = lookup(conn, ref.name)
        if dom is None:
            raise task_error(ErrorType.DOMAIN_NOT_FOUND,
                             f"no domain {ref.name!r} on {ref.host}", host=ref.host, vm=ref.name)
        return dom


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
