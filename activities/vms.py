"""VM activities: the inventory steps of the VM tasks (one transaction each) and the libvirt
domain actions (one libvirt action each).

Every one is idempotent: it looks at what the database or the hypervisor has before acting, so a
repeated call (Temporal runs activities at least once) finds the work done and says so instead of
failing; libvirt errors leave as typed errors.
"""


from __future__ import annotations

import time
from functools import partial

import libvirt
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import own_heartbeats
from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors, lookup, power_state
from taskomatic.hypervisor.domain_xml import build_domain_xml, shape_of
from taskomatic.hypervisor.presence import elsewhere_error, sightings
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    DomainRef,
    DomainReport,
    DomainSpec,
    HostRef,
    HostState,
    InventoryResult,
    LookupVmInput,
    RecordedVm,
    RecordVmInput,
    ReleaseCapacityInput,
    ReleaseResult,
    RemoveVmInput,
    Reservation,
    ReserveCapacityInput,
    SetVmStateInput,
    VmPlacement,
    VmState,
    WaitShutoffInput,
)

_OFF = {VmState.SHUTOFF, VmState.CRASHED}
_WORDS = {VmState.SUSPENDED: "suspended to memory", VmState.SHUTDOWN: "shutting down",
          VmState.SHUTOFF: "shut off", VmState.UNKNOWN: "in a state libvirt does not name"}


def _word(state: VmState) -> str:
    """A power state in words: ``paused``, ``suspended to memory``, ``shutting down``."""
    return _WORDS.get(state, state.value)


def _already_off(state: VmState) -> str:
    """The no-op detail of a verb that finds the domain off: ``already shut off`` (or
    ``already off (crashed)``)."""
    return "already shut off" if state == VmState.SHUTOFF else f"already off ({_word(state)})"


def _report(ref: DomainRef, state: VmState | None, changed: bool, detail: str) -> DomainReport:
    get_logger(vm=ref.name, host=ref.host).info(detail, changed=changed, state=state)
    return DomainReport(name=ref.name, host=ref.host, state=state, changed=changed, detail=detail)


def _refuse(ref: DomainRef, action: str, state: VmState, hint: str,
            kind: ErrorType = ErrorType.INVALID_OPERATION) -> ApplicationError:
    """A verb that cannot act on a domain in ``state``: refused naming the state, nothing done."""
    return task_error(kind, f"cannot {action} {ref.name} on {ref.host}: it is "
                      f"{_word(state)}; {hint}", host=ref.host, vm=ref.name)


def other_hosts(db: Database, host: str) -> list[HostRef]:
    """Every registered host but ``host`` that may hold domains: all but those marked down (an
    operator's word that the machine is gone). One inventory read."""
    return [HostRef(name=h.name, uri=h.uri, migration_uri=h.migration_uri)
            for h in inventory.list_hosts(db) if h.name != host and h.state != HostState.DOWN]


class DomainActivities:
    """Activities on libvirt domains, sharing the worker's connections.

    Each decides from what libvirt reports at that moment, never from the inventory's copy of a
    power state, and handles every state libvirt can report: it acts, or refuses naming the state
    (``InvalidOperation``). A domain that is not on the host named is "absent" only if no other
    registered host (not down) defines it, with the VM's UUID when the inventory knows it;
    otherwise the step refuses with ``DomainElsewhere`` naming where it is, so no live guest is
    orphaned. A host that cannot be asked is not assumed empty (``HypervisorUnavailable``).
    """

    def __init__(self, hypervisors: Hypervisors, db: Database) -> None:
        self.hv = hypervisors
        self.db = db

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
        """Remove a domain's definition, powering it off first if it is active (whatever its
        state). Absent is a no-op unless another host has it (``DomainElsewhere``)."""
        with self.hv.call("undefine", ref.uri, ref.host, ref.name) as conn:
            dom = lookup(conn, ref.name)
            if dom is None:
                self._refuse_if_elsewhere(ref)
                return _report(ref, None, False, "already absent")
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            return _report(ref, None, True, "undefined")

    @activity.defn
    def start_domain(self, ref: DomainRef) -> DomainReport:
        """Start a shut-off (or crashed and stopped) domain, resume a paused one, wake one
        suspended to memory; running is a no-op. Refused: crashed but still active (power it
        off first), shutting down, a wake-up the hypervisor cannot do."""
        with self.hv.call("start", ref.uri, ref.host, ref.name) as conn:
            dom = self._require(conn, ref)
            state = power_state(dom)
            if not dom.isActive():
                dom.create()
                return _report(ref, power_state(dom), True,
                               "started" if state == VmState.SHUTOFF
                               else f"started (was {_word(state)})")
            if state == VmState.RUNNING:
                return _report(ref, state, False, "already running")
            if state == VmState.PAUSED:
                dom.resume()
                return _report(ref, power_state(dom), True, "resumed (was paused)")
            if state == VmState.SUSPENDED:
                return self._wake(ref, dom)
            raise _refuse(ref, "start", state, "power it off first (vm stop --force)")

    def _wake(self, ref: DomainRef, dom: libvirt.virDomain) -> DomainReport:
        try:
            dom.pMWakeup(0)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            raise _refuse(ref, "start", VmState.SUSPENDED, "this hypervisor cannot wake it",
                          ErrorType.NOT_SUPPORTED) from err
        return _report(ref, power_state(dom), True, "woken up (was suspended to memory)")

    @activity.defn
    def shutdown_domain(self, ref: DomainRef) -> DomainReport:
        """Ask a running guest to shut down (ACPI); see ``wait_domain_shutoff``. Off, or already
        shutting down, is a no-op. Refused: paused, suspended to memory or crashed (a guest that
        does not run cannot shut itself down; stop it with force)."""
        with self.hv.call("shutdown", ref.uri, ref.host, ref.name) as conn:
            dom = self._require(conn, ref)
            state = power_state(dom)
            if not dom.isActive():
                return _report(ref, state, False, _already_off(state))
            if state == VmState.SHUTDOWN:
                return _report(ref, state, False, "already shutting down")
            if state != VmState.RUNNING:
                raise _refuse(ref, "shut down", state, "its guest cannot shut itself down: "
                              "stop it with --force (or start it first to resume it)")
            dom.shutdown()
            return _report(ref, power_state(dom), True, "graceful shutdown requested")

    @activity.defn
    @own_heartbeats
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
        """Power a domain off at once, whatever its active state (running, paused, suspended,
        crashed, shutting down). Already off is a no-op; absent too, unless another host has it
        (``DomainElsewhere``)."""
        with self.hv.call("destroy", ref.uri, ref.host, ref.name) as conn:
            dom = lookup(conn, ref.name)
            if dom is None:
                self._refuse_if_elsewhere(ref)
                return _report(ref, None, False, "absent; nothing to power off")
            state = power_state(dom)
            if not dom.isActive():
                return _report(ref, state, False, _already_off(state))
            dom.destroy()
            return _report(ref, power_state(dom), True, "powered off" if state == VmState.RUNNING
                           else f"powered off (was {_word(state)})")

    def _require(self, conn: libvirt.virConnect, ref: DomainRef) -> libvirt.virDomain:
        dom = lookup(conn, ref.name)
        if dom is None:
            self._refuse_if_elsewhere(ref)
            raise task_error(ErrorType.DOMAIN_NOT_FOUND,
                             f"no domain {ref.name!r} on {ref.host}", host=ref.host, vm=ref.name)
        return dom

    def _refuse_if_elsewhere(self, ref: DomainRef) -> None:
        """Raise ``DomainElsewhere`` if a registered host other than ``ref.host`` defines the
        domain (with the VM's recorded UUID, if the inventory has the VM)."""
        recorded = inventory.get_vm(self.db, ref.name)
        seen = sightings(self.hv, ref.name, other_hosts(self.db, ref.host),
                         recorded.vm.uuid if recorded is not None else None)
        if seen:
            raise elsewhere_error(ref.name, ref.host, seen)


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

    # The three finalize steps below may be a task's last step: with ``release_task`` they
    # release that task's claims in their own transaction (``ordering.finishing``) and name
    # the tasks to wake in their result.

    @activity.defn
    def record_vm(self, inp: RecordVmInput) -> RecordedVm:
        vm, woken = ordering.finishing(self.db, inp.release_task,
                                       partial(inventory.record_vm_in, inp=inp))
        get_logger(vm=vm.name, host=vm.host).info("VM recorded", state=vm.state)
        return RecordedVm(**vm.model_dump(), woken=woken)

    @activity.defn
    def set_vm_state(self, inp: SetVmStateInput) -> InventoryResult:
        changed, woken = ordering.finishing(
            self.db, inp.release_task,
            partial(inventory.set_vm_state_in, name=inp.name, state=inp.state))
        detail = f"state {inp.state}" if changed else f"state already {inp.state}"
        get_logger(vm=inp.name).info("VM state", detail=detail)
        return InventoryResult(changed=changed, detail=detail, woken=woken)

    @activity.defn
    def remove_vm(self, inp: RemoveVmInput) -> InventoryResult:
        changed, woken = ordering.finishing(self.db, inp.release_task,
                                            partial(inventory.remove_vm_in, name=inp.name))
        detail = "removed from inventory" if changed else "already absent from inventory"
        get_logger(vm=inp.name).info(detail)
        return InventoryResult(changed=changed, detail=detail, woken=woken)
