"""Inventory side of placement: find the host a reservation goes to and lock only that row.

``taskomatic.placement`` decides; this module feeds it and makes the decision stick under
concurrency, locking only the host it changes (the hosts row of the chosen host ``FOR UPDATE``,
then its load re-read and every filter re-checked under that lock):

- **fast path** (a request without an affinity group or pinned host): one query pre-selects,
  among the hosts of the request's cluster that are up, not excluded, of its hypervisor type
  and with room by the usage counters (``host_usage``: capacity and use, kept by triggers on
  ``hosts``, ``clusters``, ``vms`` and ``reservations``, indexed by weigher), the best by the
  cluster's weigher that no other placement holds right now, and locks it (``FOR UPDATE SKIP
  LOCKED``: concurrent placements take the next-best host instead of queueing on one). Its
  exact load (the sum of its VMs and reservations) is then re-read and ``placement.exclusion``
  run on it; if it fails (a pool it lacks, say), the slow path runs.
- **slow path** (a group, a pinned host, or the fast path found nothing): every candidate's
  exact load is read without locks, ``placement.choose`` picks (its refusal, which explains
  every excluded host, is the error), the chosen row is locked and re-checked; if another
  placement took its room meanwhile, the lock is given back (savepoint) and the choice made
  again, at most ``ATTEMPTS`` times, then every candidate is locked in id order as before.

Hosts are locked one at a time, so placements never deadlock one another; state changes
(maintenance) lock the host row too, so a host that left service is never picked once that
commit is visible.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskomatic import placement
from taskomatic.inventory.clusters import host_groups
from taskomatic.inventory.disks import local_pool_rooms
from taskomatic.inventory.hosts import lock_hosts, read_hosts
from taskomatic.models import HostRecord

ATTEMPTS = 3

# The fast path's pre-selection: the hosts of the cluster (%(cluster)s NULL: any) passing the
# SQL-expressible filters by the usage counters, best first by the weigher (spread: least memory
# used, as a share, then vCPUs; pack: the most; then the name in code-point order, as Python
# compares it), the first one no other placement holds, locked. With a cluster it walks the
# weigher's index of host_usage: its cost does not grow with the number of hosts.
_PRESELECT = """
    SELECT h.id, h.name FROM host_usage u JOIN hosts h ON h.id = u.host_id
    JOIN clusters c ON c.id = u.cluster_id
    WHERE {cluster} AND (%(kind)s::text IS NULL OR c.hypervisor_type = %(kind)s)
      AND h.state = 'up' AND NOT (h.name = ANY(%(exclude)s))
      AND u.vcpus_total - u.vcpus >= %(vcpus)s AND u.memory_total - u.memory_mib >= %(memory)s
    ORDER BY {order}
    LIMIT 1
    FOR UPDATE OF h SKIP LOCKED
"""
_IN_CLUSTER = "u.cluster_id = (SELECT id FROM clusters WHERE name = %(cluster)s)"
_ORDERS = {"spread": 'u.memory_share, u.vcpu_share, u.name COLLATE "C"',
           "pack": 'u.memory_share DESC, u.vcpu_share DESC, u.name COLLATE "C"'}
_PRESELECTS = {  # (weigher, in one cluster) → query; in one cluster: the index's order
    (weigher, scoped): _PRESELECT.format(cluster=_IN_CLUSTER if scoped else "TRUE",
                                         order=f"u.cluster_id, {order}" if scoped else order)
    for weigher, order in _ORDERS.items() for scoped in (True, False)}


def loads(cur: Any, hosts: Iterable[HostRecord], *, with_groups: bool,
          with_rooms: bool = False) -> list[placement.HostLoad]:
    """The hosts as placement sees them; ``with_groups``: with the affinity groups that have a
    member on each (read only when the placement has a group); ``with_rooms``: with their
    local pools' free bytes (read only for a move with a storage copy)."""
    groups = host_groups(cur) if with_groups else {}
    rooms = local_pool_rooms(cur) if with_rooms else {}
    return [placement.HostLoad.of(h, frozenset(h.pools), groups=groups.get(h.name, frozenset()),
                                  local_pools=rooms.get(h.name, ()))
            for h in hosts]


def place(cur: Any, request: placement.PlacementRequest) -> tuple[int, HostRecord]:
    """The host ``request`` goes to, its row locked ``FOR UPDATE`` in the caller's transaction:
    (host id, its exact load). Raises ``placement.choose``'s typed errors (``UnknownHost``,
    ``HostNotAvailable``, ``NoCapacity``, explained)."""
    if request.host is None and request.group is None:
        found = _fast(cur, request)
        if found is not None:
            return found
    return _slow(cur, request)


def _fast(cur: Any, request: placement.PlacementRequest) -> tuple[int, HostRecord] | None:
    query = _PRESELECTS[request.weigher, request.cluster is not None]
    cur.execute("SAVEPOINT fast_place;" + query, {
        "cluster": request.cluster, "kind": request.hypervisor_type,
        "exclude": list(request.exclude), "vcpus": request.vcpus, "memory": request.memory_mib})
    row = cur.fetchone()
    if row is not None:
        exact = read_hosts(cur, ids=[row["id"]])
        rooms = bool(request.copies)
        if exact and placement.exclusion(loads(cur, exact, with_groups=False,
                                               with_rooms=rooms)[0], request) is None:
            return row["id"], exact[0]  # (the savepoint ends with the transaction)
    cur.execute("ROLLBACK TO SAVEPOINT fast_place")  # gives the lock back
    return None


def _slow(cur: Any, request: placement.PlacementRequest) -> tuple[int, HostRecord]:
    with_groups, rooms = request.group is not None, bool(request.copies)
    for _ in range(ATTEMPTS):
        hosts = _candidates(cur, request)
        chosen = placement.choose(request, loads(cur, hosts, with_groups=with_groups,
                                                 with_rooms=rooms))
        cur.execute("SAVEPOINT slow_place")
        locked = lock_hosts(cur, chosen.name)
        exact = read_hosts(cur, ids=list(locked.values()))
        if exact:
            fresh = loads(cur, exact, with_groups=with_groups, with_rooms=rooms)[0]
            if placement.exclusion(fresh, request) is None:
                return locked[chosen.name], exact[0]
        cur.execute("ROLLBACK TO SAVEPOINT slow_place")  # another placement took it: again
    # Contended beyond the attempts: lock every candidate (in id order) and choose for sure.
    locked = lock_hosts(cur, request.host, None if request.host else request.cluster)
    hosts = read_hosts(cur, ids=list(locked.values()))
    chosen = placement.choose(request, loads(cur, hosts, with_groups=with_groups,
                                             with_rooms=rooms))
    return locked[chosen.name], next(h for h in hosts if h.name == chosen.name)


def _candidates(cur: Any, request: placement.PlacementRequest) -> list[HostRecord]:
    """The hosts placement may consider, read without locks: the pinned one, else the hosts of
    the request's cluster (every host when it has none)."""
    if request.host is not None:
        return read_hosts(cur, name=request.host)
    return read_hosts(cur, cluster=request.cluster)
