"""Placement: which host a VM goes to (after OpenStack Nova's scheduler and oVirt's scheduling
policies). Pure: no I/O, no SQL.

The inventory fetches the hosts' load (``HostLoad``: cluster, capacity with the cluster's
overcommit, what VMs and reservations use, the pools it sees, the affinity groups with members
there) and calls ``choose`` for a reservation, under the row lock of the host it changes, or
``plan`` for the clear-host dry run, without locks. Both run the same two passes:

- filters answer "can it go there?" (``FILTERS``, in order): ``same_cluster``,
  ``same_hypervisor``, ``in_service``, ``not_excluded``, ``sees_pools``, ``takes_copies``,
  ``affinity``, ``has_room``. Each returns None (passes) or why it excludes the host ("does
  not see pool images"), so every decision can be explained: a refusal and a dry-run move without
  destination name, for each excluded host, the reason and the filter (``explain``).
- weighers answer "which is best?" (``weight``; the lowest wins): soft anti-affinity first (a
  host without a member of the VM's group), then the cluster's weigher — ``spread``: the least
  memory used (share of capacity), then the least vCPUs used; ``pack``: the most of each — then
  the host name, so the choice never depends on the order of the rows.

Placement never leaves a cluster: a move's request carries its source's cluster, a create the
cluster it names (or none: any cluster). A host pinned by the request gets the same filters, and
the first it fails is the error.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.models import GroupPolicy, HostRecord, PlannedMove, Weigher
from taskomatic.states import HostState
from taskomatic.units import format_size


class PoolRoom(NamedTuple):
    """A host's local pool for a storage copy: name, type (``dir``...), free bytes (libvirt's)."""

    name: str
    type: str
    available: int


class CopyNeed(NamedTuple):
    """A volume a storage copy makes on the destination: its pool's type, capacity in bytes."""

    pool_type: str
    capacity: int


@dataclass(frozen=True)
class HostLoad:
    """A host as placement sees it: its cluster and hypervisor type, capacity (vCPUs, MiB; with
    the cluster's overcommit) and what is used of it, where used counts the VMs recorded there
    plus the reservations of tasks placing VMs there; ``pools``: the storage pools it sees,
    active there; ``groups``: the affinity groups with a member there (VM or reservation)."""

    name: str
    state: HostState
    vcpus: int
    memory_mib: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    cluster: str = "default"
    pools: frozenset[str] = frozenset()
    hypervisor_type: str = ""
    groups: frozenset[str] = frozenset()
    local_pools: tuple[PoolRoom, ...] = ()

    @classmethod
    def of(cls, host: HostRecord, pools: frozenset[str] = frozenset(),
           groups: frozenset[str] = frozenset(),
           local_pools: tuple[PoolRoom, ...] = ()) -> HostLoad:
        """The load of an inventory row (VMs and reservations added up)."""
        return cls(name=host.name, state=host.state, vcpus=host.vcpus,
                   memory_mib=host.memory_mib, cluster=host.cluster, pools=pools,
                   local_pools=local_pools,
                   hypervisor_type=host.hypervisor_type, groups=groups,
                   used_vcpus=host.used_vcpus + host.reserved_vcpus,
                   used_memory_mib=host.used_memory_mib + host.reserved_memory_mib)

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.used_vcpus

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib

    def taking(self, vcpus: int, memory_mib: int, group: str | None = None,
               copies: Sequence[CopyNeed] = ()) -> HostLoad:
        """This host once it also holds a VM of that size (in affinity group ``group``), with
        ``copies`` made where ``copy_targets`` puts them (the roomiest local pool of each type)."""
        rooms = list(self.local_pools)
        for kind, size in copy_sizes(copies).items():
            roomiest = roomiest_pool(rooms, kind)
            if roomiest is not None:
                i = rooms.index(roomiest)
                rooms[i] = roomiest._replace(available=roomiest.available - size)
        return dataclasses.replace(self, used_vcpus=self.used_vcpus + vcpus,
                                   used_memory_mib=self.used_memory_mib + memory_mib,
                                   groups=self.groups | {group} if group else self.groups,
                                   local_pools=tuple(rooms))


@dataclass(frozen=True)
class PlacementRequest:
    """Room for VM ``vm``: ``vcpus`` vCPUs and ``memory_mib`` MiB, on ``host`` if pinned (else
    on any host), never on one of ``exclude``, in ``cluster`` (a moving VM: its source's; None:
    any) on a ``hypervisor_type`` host (None: any), on a host that sees every pool of ``pools``
    (where its disks live), with the rule ``group_policy`` of its affinity ``group``; hosts
    weighed by ``weigher`` (its cluster's); ``copies``: the volumes a move with a storage copy
    makes on the destination (the VM's local disks, then left out of ``pools``). ``field`` is
    the request field an error about the pinned host (or the exclusions) blames."""

    vm: str
    vcpus: int
    memory_mib: int
    host: str | None = None
    exclude: tuple[str, ...] = ()
    field: str = "host"
    cluster: str | None = None
    pools: frozenset[str] = frozenset()
    hypervisor_type: str | None = None
    group: str | None = None
    group_policy: GroupPolicy = "anti-affinity"
    weigher: Weigher = "spread"
    copies: tuple[CopyNeed, ...] = ()


class VmSize(NamedTuple):
    """What a VM takes of a host: vCPUs and MiB of memory."""

    vcpus: int
    memory_mib: int


# --- filters: can it go there? None, or why not (after the host's name) ------------------------


def in_service(host: HostLoad, request: PlacementRequest) -> str | None:
    """Only a host in state ``up`` takes new work (not one in maintenance, failed maintenance or
    down)."""
    return None if host.state == HostState.UP else f"is in state {host.state.value!r}, not 'up'"


def same_cluster(host: HostLoad, request: PlacementRequest) -> str | None:
    """Placement and migration never leave a cluster: a host of another cluster than the
    request's is never picked (a request without a cluster may go to any)."""
    if request.cluster is None or host.cluster == request.cluster:
        return None
    return f"is in cluster {host.cluster!r}, not {request.cluster!r}"


def same_hypervisor(host: HostLoad, request: PlacementRequest) -> str | None:
    """A VM runs only on the kind of hypervisor it was made for (a moving VM: its source's
    libvirt driver); a request without a type may go to any."""
    if request.hypervisor_type is None or host.hypervisor_type == request.hypervisor_type:
        return None
    return f"is a {host.hypervisor_type!r} hypervisor, not {request.hypervisor_type!r}"


def not_excluded(host: HostLoad, request: PlacementRequest) -> str | None:
    """A host the request excludes (a migrating VM's source, or a destination that already
    failed it) is never picked."""
    if host.name not in request.exclude:
        return None
    return f"cannot take {request.vm!r} (it is the source or already failed)"


def sees_pools(host: HostLoad, request: PlacementRequest) -> str | None:
    """The host sees every storage pool the VM's disks live in (active there)."""
    missing = sorted(request.pools - host.pools)
    return f"does not see pool {', '.join(missing)}" if missing else None


def copy_targets(host: HostLoad, request: PlacementRequest) -> dict[str, PoolRoom] | str:
    """Where a storage copy puts the request's ``copies`` on ``host``: pool type → the local
    pool of that type with the most free bytes, which must hold every copied volume of that
    type together (their capacities added up: a qcow2 volume may grow to it). Or why not:
    "has no local dir pool with room for 1GiB (largest: 512MiB free)"."""
    targets: dict[str, PoolRoom] = {}
    for kind, size in copy_sizes(request.copies).items():
        roomiest = roomiest_pool(host.local_pools, kind)
        if roomiest is None or roomiest.available < size:
            largest = f" (largest: {format_size(roomiest.available)} free)" if roomiest else ""
            return f"has no local {kind} pool with room for {format_size(size)}{largest}"
        targets[kind] = roomiest
    return targets


def copy_sizes(copies: Sequence[CopyNeed]) -> dict[str, int]:
    """Pool type → the bytes the copies of that type need together, by type name."""
    need: dict[str, int] = {}
    for copy in copies:
        need[copy.pool_type] = need.get(copy.pool_type, 0) + copy.capacity
    return dict(sorted(need.items()))


def roomiest_pool(pools: Sequence[PoolRoom], kind: str) -> PoolRoom | None:
    """The local pool of type ``kind`` with the most free bytes (then the last by name)."""
    return max((p for p in pools if p.type == kind), key=lambda p: (p.available, p.name),
               default=None)


def takes_copies(host: HostLoad, request: PlacementRequest) -> str | None:
    """A move with a storage copy goes only to a host with, for each pool type of the VM's
    local disks, a local active pool of that type with room for all of them (``copy_targets``);
    a request without copies passes."""
    found = copy_targets(host, request) if request.copies else None
    return found if isinstance(found, str) else None


def affinity(host: HostLoad, request: PlacementRequest) -> str | None:
    """Hard rules of the VM's affinity group: ``anti-affinity`` — never on a host with a member
    of the group; ``affinity`` — only on a host with a member, once the group has one on a
    host the request does not exclude (``exclusion`` checks that over every candidate: the
    caller passes every host of the cluster), so a group leaving a cleared host follows its
    first mover. ``soft-anti-affinity`` is a weigher, never a filter."""
    group = request.group
    if group is None or request.group_policy == "soft-anti-affinity":
        return None
    if request.group_policy == "anti-affinity":
        return f"holds a VM of anti-affinity group {group!r}" if group in host.groups else None
    return None if group in host.groups else f"holds no VM of affinity group {group!r}"


def has_room(host: HostLoad, request: PlacementRequest) -> str | None:
    """The host's free vCPUs and free memory (capacity with the cluster's overcommit, minus VMs
    and reservations) both cover the request; nothing is overcommitted beyond that."""
    if host.free_vcpus >= request.vcpus and host.free_memory_mib >= request.memory_mib:
        return None
    return f"lacks room ({host.free_vcpus} vCPUs / {host.free_memory_mib} MiB free)"


HostFilter = Callable[[HostLoad, PlacementRequest], str | None]
FILTERS: tuple[HostFilter, ...] = (same_cluster, same_hypervisor, in_service, not_excluded,
                                   sees_pools, takes_copies, affinity, has_room)


def exclusion(host: HostLoad, request: PlacementRequest,
              hosts: Sequence[HostLoad] = ()) -> tuple[str, str] | None:
    """The first filter that excludes ``host`` as (filter name, reason), or None if every one
    passes. ``hosts`` (all candidates) lets ``affinity`` admit the first member of a group."""
    for check in FILTERS:
        if check is affinity and request.group_policy == "affinity" and not any(
                request.group in h.groups for h in hosts if h.name not in request.exclude):
            continue  # the group's first member (or all leave an excluded host): anywhere
        reason = check(host, request)
        if reason is not None:
            return check.__name__, reason
    return None


# --- weighers: which is best? (lowest first) --------------------------------------------------


def memory_used_ratio(host: HostLoad) -> float:
    """The memory used, as a share of the host's memory."""
    return host.used_memory_mib / host.memory_mib


def vcpu_used_ratio(host: HostLoad) -> float:
    """The vCPUs used, as a share of the host's vCPUs."""
    return host.used_vcpus / host.vcpus


def host_name(host: HostLoad) -> str:
    """The last tie-breaker: the host name, so the choice never depends on the row order."""
    return host.name


def weight(host: HostLoad, request: PlacementRequest | None = None
           ) -> tuple[int, float, float, str]:
    """The weighers in order; the host with the lowest weight is the best: first, for a soft
    anti-affinity group, 1 if the host already holds a member of it (else 0); then the
    request's weigher — ``spread`` (also without a request): the least memory used, then the
    least vCPUs used (shares of capacity); ``pack`` negates them, the most used first — then
    the host name."""
    if request is None:
        return 0, memory_used_ratio(host), vcpu_used_ratio(host), host_name(host)
    sign = -1.0 if request.weigher == "pack" else 1.0
    crowded = int(request.group_policy == "soft-anti-affinity" and request.group in host.groups)
    return (crowded, sign * memory_used_ratio(host), sign * vcpu_used_ratio(host),
            host_name(host))


# --- the choice -------------------------------------------------------------------------------


def best(request: PlacementRequest, hosts: Sequence[HostLoad]) -> HostLoad | None:
    """The best host for ``request`` among ``hosts`` (a pinned request: only that one), or None
    when none passes every filter."""
    fits = [h for h in hosts if (request.host is None or h.name == request.host)
            and exclusion(h, request, hosts) is None]
    return min(fits, key=lambda h: weight(h, request), default=None)


def choose(request: PlacementRequest, hosts: Sequence[HostLoad]) -> HostLoad:
    """The host ``request`` goes to among ``hosts`` (the caller's candidates: every host of the
    cluster, or the pinned one).

    Raises, with ``vm`` and (pinned) ``host`` set:
    - ``UnknownHost`` (field ``request.field``) when the pinned host is not among ``hosts``;
    - ``HostNotAvailable`` (field ``request.field``) when a filter other than ``has_room``
      excludes the pinned host ("host 'a' is in state 'down', not 'up'");
    - ``NoCapacity`` when the pinned host lacks room (field ``request.field``), or when no host
      passes every filter: field ``memory_mib`` if some host fails only for room, else
      ``request.field`` if the request excludes hosts, else ``host``; the message names, for
      each excluded host, the filter and why (``explain``).
    """
    chosen = best(request, hosts)
    if chosen is not None:
        return chosen
    raise _refusal(request, hosts)


def plan(moves: Sequence[tuple[str, PlacementRequest | None]], hosts: Sequence[HostLoad]
         ) -> list[PlannedMove]:
    """Where each VM of ``moves`` (name, request; in that order) would go if its host were
    cleared now (each request excludes that host and carries its cluster).

    Each VM is placed as ``choose`` would place it, and each planned move counts against its
    destination for the VMs after it. A VM without a request is "not in the inventory"; one no
    host takes gets the reason "no host can take it: " and ``explain``'s account.
    """
    loads = {h.name: h for h in hosts}
    planned: list[PlannedMove] = []
    for vm, request in moves:
        if request is None:
            planned.append(PlannedMove(vm=vm, destination=None, reason="not in the inventory"))
            continue
        chosen = best(request, list(loads.values()))
        if chosen is None:
            planned.append(PlannedMove(vm=vm, destination=None, reason="no host can take it: "
                                       + explain(request, list(loads.values()))))
            continue
        loads[chosen.name] = chosen.taking(request.vcpus, request.memory_mib, request.group,
                                           request.copies)
        planned.append(PlannedMove(vm=vm, destination=chosen.name))
    return planned


MAX_EXPLAINED = 10
"""At most this many hosts are named one by one in an explanation; the rest are counted by
filter."""


def explain(request: PlacementRequest, hosts: Sequence[HostLoad]) -> str:
    """Why no host of ``hosts`` takes ``request``: "h2: does not see pool images (sees_pools);
    h3: is in state 'down', not 'up' (in_service)". The hosts that passed the most filters come
    first (a host excluded by a later filter nearly fit), then by name; at most
    ``MAX_EXPLAINED`` are named, the rest counted by filter; hosts of other clusters only
    counted ("4 hosts of other clusters")."""
    order = [f.__name__ for f in FILTERS]
    excluded = sorted((-order.index(found[0]), host.name, *found) for host in hosts
                       if (found := exclusion(host, request, hosts)) is not None)
    named: list[str] = []
    counted: Counter[str] = Counter()
    for _rank, name, check, reason in excluded:
        if check == "same_cluster" or len(named) >= MAX_EXPLAINED:
            counted[check] += 1
        else:
            named.append(f"{name}: {reason} ({check})")
    elsewhere = counted.pop("same_cluster", 0)
    parts = named + [f"{n} more ({check})" for check, n in sorted(counted.items())]
    if elsewhere:
        parts.append(f"{elsewhere} hosts of other clusters")
    if not named and not counted:
        return (f"cluster {request.cluster!r} has no host ({elsewhere} hosts of other clusters)"
                if elsewhere else "there is no host")
    return "; ".join(parts)


def _refusal(request: PlacementRequest, hosts: Sequence[HostLoad]) -> ApplicationError:
    """Why no host passed the filters, as the typed error ``choose`` raises."""
    vm, pinned = request.vm, request.host
    size = f"{request.vcpus} vCPUs / {request.memory_mib} MiB"
    if pinned is not None:
        host = next((h for h in hosts if h.name == pinned), None)
        if host is None:
            return task_error(ErrorType.UNKNOWN_HOST, f"no host named {pinned!r}",
                              field=request.field, host=pinned, vm=vm)
        check, reason = exclusion(host, request, hosts) or ("has_room", "")
        kind = ErrorType.NO_CAPACITY if check == "has_room" else ErrorType.HOST_NOT_AVAILABLE
        if check == "has_room":
            reason = (f"lacks room for {size} ({host.free_vcpus} vCPUs / "
                      f"{host.free_memory_mib} MiB free)")
        return task_error(kind, f"host {pinned!r} {reason}", field=request.field, host=pinned,
                          vm=vm)
    checks = {(exclusion(h, request, hosts) or ("", ""))[0] for h in hosts}
    field = ("memory_mib" if "has_room" in checks
             else request.field if request.exclude else "host")
    return task_error(ErrorType.NO_CAPACITY,
                      f"no host can take {vm!r} ({size}): {explain(request, hosts)}",
                      field=field, vm=vm)
