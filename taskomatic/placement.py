"""Placement: which host a VM goes to (after OpenStack Nova's scheduler). Pure: no I/O, no SQL.

The inventory fetches the hosts' load (``HostLoad``: capacity, and what VMs and reservations
use) and calls ``choose`` for a reservation, under the candidate hosts' row locks, or ``plan``
for the clear-host dry run, without locks. Both run the same two passes:

- filters answer "can it go there?": ``in_service``, ``not_excluded``, ``has_room``;
- weighers answer "which is best?": ``memory_used_ratio``, then ``vcpu_used_ratio``, then
  ``host_name``; the lowest ``weight`` wins.

A host pinned by the request gets the same filters, and the first it fails is the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.models import HostRecord, PlannedMove
from taskomatic.states import HostState


@dataclass(frozen=True)
class HostLoad:
    """A host as placement sees it: its cluster, capacity (vCPUs, MiB; with the cluster's
    overcommit) and what is used of it, where used counts the VMs recorded there plus the
    reservations of tasks placing VMs there; ``pools``: the storage pools it sees, active
    there."""

    name: str
    state: HostState
    vcpus: int
    memory_mib: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    cluster: str = "default"
    pools: frozenset[str] = frozenset()

    @classmethod
    def of(cls, host: HostRecord, pools: frozenset[str] = frozenset()) -> HostLoad:
        """The load of an inventory row (VMs and reservations added up)."""
        return cls(name=host.name, state=host.state, vcpus=host.vcpus,
                   memory_mib=host.memory_mib, cluster=host.cluster, pools=pools,
                   used_vcpus=host.used_vcpus + host.reserved_vcpus,
                   used_memory_mib=host.used_memory_mib + host.reserved_memory_mib)

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.used_vcpus

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib

    def taking(self, vcpus: int, memory_mib: int) -> HostLoad:
        """This host once it also holds a VM of that size."""
        return dataclasses.replace(self, used_vcpus=self.used_vcpus + vcpus,
                                   used_memory_mib=self.used_memory_mib + memory_mib)


@dataclass(frozen=True)
class PlacementRequest:
    """Room for VM ``vm``: ``vcpus`` vCPUs and ``memory_mib`` MiB, on ``host`` if pinned (else
    on any host), never on one of ``exclude``, in ``cluster`` (a moving VM: its source's; None:
    any), on a host that sees every pool of ``pools`` (where its disks live). ``field`` is the
    request field an error about the pinned host (or the exclusions) blames."""

    vm: str
    vcpus: int
    memory_mib: int
    host: str | None = None
    exclude: tuple[str, ...] = ()
    field: str = "host"
    cluster: str | None = None
    pools: frozenset[str] = frozenset()


class VmSize(NamedTuple):
    """What a VM takes of a host: vCPUs and MiB of memory."""

    vcpus: int
    memory_mib: int


# --- filters: can it go there? ----------------------------------------------------------------


def in_service(host: HostLoad, request: PlacementRequest) -> bool:
    """Only a host in state ``up`` takes new work (not one in maintenance, failed maintenance or
    down)."""
    return host.state == HostState.UP


def not_excluded(host: HostLoad, request: PlacementRequest) -> bool:
    """A host the request excludes (a migrating VM's source, or a destination that already
    failed it) is never picked."""
    return host.name not in request.exclude


def has_room(host: HostLoad, request: PlacementRequest) -> bool:
    """The host's free vCPUs and free memory (capacity minus VMs and reservations) both cover
    the request; nothing is overcommitted."""
    return host.free_vcpus >= request.vcpus and host.free_memory_mib >= request.memory_mib


def same_cluster(host: HostLoad, request: PlacementRequest) -> bool:
    """Placement and migration never leave a cluster: a host of another cluster than the
    request's is never picked (a request without a cluster may go to any)."""
    return request.cluster is None or host.cluster == request.cluster


def sees_pools(host: HostLoad, request: PlacementRequest) -> bool:
    """The host sees every storage pool the VM's disks live in (active there)."""
    return request.pools <= host.pools


HostFilter = Callable[[HostLoad, PlacementRequest], bool]
FILTERS: tuple[HostFilter, ...] = (in_service, same_cluster, not_excluded, sees_pools, has_room)


# --- weighers: which is best? (lowest first) --------------------------------------------------


def memory_used_ratio(host: HostLoad) -> float:
    """First rule: the least memory used, as a share of the host's memory."""
    return host.used_memory_mib / host.memory_mib


def vcpu_used_ratio(host: HostLoad) -> float:
    """On a tie: the least vCPUs used, as a share of the host's vCPUs."""
    return host.used_vcpus / host.vcpus


def host_name(host: HostLoad) -> str:
    """On a tie again: the host name, so the choice never depends on the order of the rows."""
    return host.name


def weight(host: HostLoad) -> tuple[float, float, str]:
    """The weighers in order; the host with the lowest weight is the best."""
    return memory_used_ratio(host), vcpu_used_ratio(host), host_name(host)


# --- the choice -------------------------------------------------------------------------------


def best(request: PlacementRequest, hosts: Sequence[HostLoad]) -> HostLoad | None:
    """The best host for ``request`` among ``hosts`` (a pinned request: only that one), or None
    when none passes every filter."""
    fits = [h for h in hosts if (request.host is None or h.name == request.host)
            and all(passes(h, request) for passes in FILTERS)]
    return min(fits, key=weight, default=None)


def choose(request: PlacementRequest, hosts: Sequence[HostLoad]) -> HostLoad:
    """The host ``request`` goes to; ``hosts`` are the candidates the caller has locked.

    Raises, with ``vm`` and (pinned) ``host`` set:
    - ``UnknownHost`` (field ``request.field``) when the pinned host is not among ``hosts``;
    - ``HostNotAvailable`` (field ``request.field``) when the pinned host is not in service or is
      excluded;
    - ``NoCapacity`` when no host is in service and not excluded (field ``request.field`` if the
      request excludes hosts, else ``host``), or when none of those has room (field
      ``request.field`` when pinned, else ``memory_mib``), naming the roomiest host.
    """
    chosen = best(request, hosts)
    if chosen is not None:
        return chosen
    raise _refusal(request, hosts)


def plan(source: str, vms: Sequence[str], sizes: Mapping[str, VmSize],
         hosts: Sequence[HostLoad], cluster: str | None = None) -> list[PlannedMove]:
    """Where each of ``vms`` (in that order) would go if host ``source`` (of ``cluster``) were
    cleared now.

    Each VM is placed as ``choose`` would place it (any host of ``cluster`` but ``source``), and
    each planned move counts against its destination for the VMs after it. A VM without a size
    in ``sizes`` is "not in the inventory"; one no host takes gets the reason "no host in
    service has room".
    """
    loads = {h.name: h for h in hosts}
    moves: list[PlannedMove] = []
    for vm in vms:
        size = sizes.get(vm)
        if size is None:
            moves.append(PlannedMove(vm=vm, destination=None, reason="not in the inventory"))
            continue
        request = PlacementRequest(vm=vm, vcpus=size.vcpus, memory_mib=size.memory_mib,
                                   exclude=(source,), cluster=cluster)
        chosen = best(request, list(loads.values()))
        if chosen is None:
            moves.append(PlannedMove(vm=vm, destination=None,
                                     reason=f"no host in service has room for {size.vcpus}"
                                            f" vCPUs / {size.memory_mib} MiB"))
            continue
        loads[chosen.name] = chosen.taking(size.vcpus, size.memory_mib)
        moves.append(PlannedMove(vm=vm, destination=chosen.name))
    return moves


def _refusal(request: PlacementRequest, hosts: Sequence[HostLoad]) -> ApplicationError:
    """Why no host passed the filters, as the typed error ``choose`` raises."""
    vm, pinned = request.vm, request.host
    if pinned is not None:
        host = next((h for h in hosts if h.name == pinned), None)
        if host is None:
            return task_error(ErrorType.UNKNOWN_HOST, f"no host named {pinned!r}",
                              field=request.field, host=pinned, vm=vm)
        if not in_service(host, request):
            return task_error(ErrorType.HOST_NOT_AVAILABLE,
                              f"host {pinned!r} is in state {host.state.value!r}, not 'up'",
                              field=request.field, host=pinned, vm=vm)
        if not same_cluster(host, request):
            return task_error(ErrorType.HOST_NOT_AVAILABLE,
                              f"host {pinned!r} is in cluster {host.cluster!r}, not "
                              f"{request.cluster!r}", field=request.field, host=pinned, vm=vm)
        if not not_excluded(host, request):
            return task_error(ErrorType.HOST_NOT_AVAILABLE,
                              f"host {pinned!r} cannot take {vm!r} (it is the source or already "
                              "failed)", field=request.field, host=pinned, vm=vm)
        candidates = [host]
    else:
        candidates = [h for h in hosts if all(passes(h, request) for passes in FILTERS
                                              if passes is not has_room)]
        if not candidates and request.exclude:
            return task_error(ErrorType.NO_CAPACITY, "no other host is in service (excluded: "
                              f"{', '.join(request.exclude)})", field=request.field, vm=vm)
        if not candidates:
            return task_error(ErrorType.NO_CAPACITY, "no host is in service", field="host",
                              vm=vm)
    roomiest = max(candidates, key=lambda h: (h.free_memory_mib, h.name))
    where, field = (("no host in service", "memory_mib") if pinned is None
                    else (f"host {pinned!r}", request.field))
    return task_error(ErrorType.NO_CAPACITY,
                      f"{where} lacks room for {request.vcpus} vCPUs / {request.memory_mib} MiB"
                      f" (roomiest: {roomiest.name} with {roomiest.free_vcpus} vCPUs /"
                      f" {roomiest.free_memory_mib} MiB free)", field=field, host=pinned, vm=vm)
