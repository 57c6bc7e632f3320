"""The invariants of a fault run (``bench.faults``), checked against libvirt itself.

libvirt is the truth: the domains of every host of the run are listed through the worker's own
``Hypervisors`` connections (a test-driver host's state lives in those connections), with their
power state, vCPUs and memory as libvirt reports them. Against that, after every task of the run
has ended:

- **one host**: every VM of the run is defined on exactly one host, and no other domain is there;
- **power**: it runs, or is shut off, as it did before the run (a move neither starts nor stops);
- **inventory**: the inventory records it on the host libvirt has it on, in libvirt's state;
- **capacity**: each host's used vCPUs and MiB in the inventory are the sums over the domains
  libvirt has there, and nothing is reserved on it;
- **leftovers**: no reservation of the run's VMs or hosts and no claim of its tasks or resources.

(**ended**, every task of the run closed, is checked by the runner, which knows the tasks.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import libvirt

from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database

# libvirt's domain states by the names the inventory uses (``VmState``); read here from
# ``virDomain.info()`` rather than through taskomatic's own mapping, so the check stands apart.
_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


class HostLike(Protocol):
    """A host as the checks need it (a ``HostSpec``, a lab's ``LabHost``): its name in the
    inventory and its libvirt URI."""

    @property
    def name(self) -> str: ...

    @property
    def uri(self) -> str: ...


@dataclass(frozen=True)
class Domain:
    """One domain as libvirt reports it: its host, state (a ``VmState`` value), vCPUs, MiB."""

    host: str
    state: str
    vcpus: int
    memory_mib: int

    def __str__(self) -> str:
        return f"{self.state} on {self.host}"


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which (``invariant``), of what (``subject``: a VM, host or task),
    what libvirt had ("-" when libvirt has no say: a claim, a task) and what the inventory (or,
    for a task, Temporal) said."""

    invariant: str
    subject: str
    libvirt: str
    inventory: str

    def __str__(self) -> str:
        if self.libvirt == "-":
            return f"[{self.invariant}] {self.subject}: {self.inventory}"
        return (f"[{self.invariant}] {self.subject}: libvirt has {self.libvirt}; "
                f"inventory says {self.inventory}")


def libvirt_view(hv: Hypervisors, hosts: Sequence[HostLike]) -> dict[str, list[Domain]]:
    """Domain name → every host of ``hosts`` that defines it (usually one), from libvirt; a
    domain gone between the listing and its look-up is left out. Errors:
    ``libvirt.libvirtError`` if a host cannot be listed."""
    seen: dict[str, list[Domain]] = {}
    for host in hosts:
        for dom in hv.connection(host.uri).listAllDomains():
            try:
                state, max_kib, _mem, vcpus, _cpu = dom.info()
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                continue  # gone since listed (a revived libvirtd ends a half-received guest)
            seen.setdefault(dom.name(), []).append(
                Domain(host=host.name, state=_STATES.get(state, "unknown"), vcpus=vcpus,
                       memory_mib=max_kib // 1024))
    return seen


def check_vms(db: Database, view: Mapping[str, list[Domain]], before: Mapping[str, Domain]
              ) -> list[Violation]:
    """The one-host, power and inventory invariants of the VMs of ``before`` (their domains
    before the run), and no domain in ``view`` that is not one of them."""
    found = [Violation("one host", name, ", ".join(map(str, doms)), "-")
             for name, doms in sorted(view.items()) if name not in before]
    for name, was in sorted(before.items()):
        doms = view.get(name, [])
        row = inventory.get_vm(db, name)
        said = f"{row.vm.state} on {row.vm.host}" if row is not None else "no such VM"
        if len(doms) != 1:
            found.append(Violation("one host", name, ", ".join(map(str, doms)) or
                                   "no domain on any host", said))
            continue
        dom = doms[0]
        if (dom.state == "running") != (was.state == "running"):
            found.append(Violation("power", name, f"{dom} (was {was})", said))
        if row is None or row.vm.host != dom.host:
            found.append(Violation("inventory location", name, str(dom), said))
        elif row.vm.state != dom.state:
            found.append(Violation("inventory state", name, str(dom), said))
    return found


def check_capacity(db: Database, view: Mapping[str, list[Domain]], hosts: Sequence[HostLike]
                   ) -> list[Violation]:
    """Each host's used vCPUs / MiB in the inventory equal the sums over the domains libvirt has
    there, and its reserved vCPUs / MiB are zero."""
    found = []
    for host in hosts:
        doms = [d for ds in view.values() for d in ds if d.host == host.name]
        vcpus, mib = sum(d.vcpus for d in doms), sum(d.memory_mib for d in doms)
        rec = inventory.get_host(db, host.name)
        if rec is None:
            found.append(Violation("capacity", host.name, f"{len(doms)} domains", "no such host"))
            continue
        if (rec.used_vcpus, rec.used_memory_mib) != (vcpus, mib):
            found.append(Violation(
                "capacity", host.name, f"{len(doms)} domains using {vcpus} vCPUs / {mib} MiB",
                f"{rec.vm_count} VMs using {rec.used_vcpus} vCPUs / {rec.used_memory_mib} MiB"))
        if rec.reserved_vcpus or rec.reserved_memory_mib:
            found.append(Violation("capacity", host.name, "-", f"inventory reserves "
                                   f"{rec.reserved_vcpus} vCPUs / {rec.reserved_memory_mib} MiB"))
    return found


def check_leftovers(db: Database, vms: Iterable[str], hosts: Sequence[HostLike],
                    task_prefix: str) -> list[Violation]:
    """No reservation of the run's VMs or on its hosts; no claim by a task whose id is (or
    starts with) ``task_prefix`` or on a resource naming one of the run's VMs or hosts."""
    names, host_names = sorted(vms), [h.name for h in hosts]
    with db.transaction() as cur:
        cur.execute("SELECT r.task_id, r.vm_name, h.name AS host, r.vcpus, r.memory_mib"
                    " FROM reservations r JOIN hosts h ON h.id = r.host_id"
                    " WHERE r.vm_name = ANY(%s) OR h.name = ANY(%s) ORDER BY r.task_id",
                    (names, host_names))
        rows = cur.fetchall()
    found = [Violation("reservation", r["task_id"], "-",
                       f"inventory reserves {r['vcpus']} vCPUs / {r['memory_mib']} MiB on "
                       f"{r['host']} for {r['vm_name']}") for r in rows]
    subjects = set(names) | set(host_names)
    for claim in ordering.queue(db):
        ours = claim.task_id.startswith(task_prefix)
        if ours or claim.resource.partition(":")[2] in subjects:
            found.append(Violation("claim", claim.task_id, "-", f"inventory has its claim on "
                                   f"{claim.resource} ({'held' if claim.holds else 'waiting'})"))
    return found


def check_run(db: Database, hv: Hypervisors, hosts: Sequence[HostLike],
              before: Mapping[str, Domain], task_prefix: str) -> list[Violation]:
    """Every invariant of the module's list but "ended", for one run: the VMs of ``before``
    on ``hosts``, the tasks whose ids start with ``task_prefix``."""
    view = libvirt_view(hv, hosts)
    return (check_vms(db, view, before) + check_capacity(db, view, hosts)
            + check_leftovers(db, before, hosts, task_prefix))
