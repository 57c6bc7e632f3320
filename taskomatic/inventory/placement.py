"""Inventory side of placement: find the host a reservation goes to and lock only that row.

``taskomatic.placement`` decides; this module feeds it and makes the decision stick under
concurrency, locking only the host it changes (the hosts row of the chosen host ``FOR UPDATE``,
then its load re-read and every filter re-checked under that lock):

- **one call** (``reserve_fast``: a create without an affinity group or pinned host): the SQL
  function ``reserve_fast`` (migration 0013) checks the name is free, pre-selects and locks
  the best host as the fast path does, reads its exact load under that lock, inserts the
  reservation and checks the name again, in one round trip; ``placement.exclusion`` then runs
  every filter on that exact load, in Python, before the caller commits. Anything else than a
  placement passing every filter makes the caller roll back and take the full path.
- **fast path** (a request without an affinity group or pinned host): the SQL function
  ``preselect_host`` picks, among the hosts of the request's cluster that are up, not
  excluded and with room by the usage counters (``host_usage``: capacity and use, kept by
  triggers on ``hosts``, ``clusters``, ``vms`` and ``reservations``, indexed by weigher), the
  best by the cluster's weigher that no other placement holds right now, and locks it (``FOR
  UPDATE SKIP LOCKED``: concurrent placements take the next-best host instead of queueing on
  one). Its exact load (the sum of its VMs and reservations) is then re-read and
  ``placement.exclusion`` run on it; if it fails (a pool it lacks, say), the slow path runs.
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

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from taskomatic import placement
from taskomatic.inventory.clusters import host_groups
from taskomatic.inventory.disks import local_pool_rooms
from taskomatic.inventory.hosts import host_record, lock_hosts, read_hosts
from taskomatic.models import HostRecord

ATTEMPTS = 3

# The fast path's pre-selection (the SQL function ``preselect_host``, migration 0013: the best
# host by the counters that no other placement holds, locked), after a savepoint: in the named
# cluster (none such: no row), or among every host.
_PRESELECT_IN_CLUSTER = """SAVEPOINT fast_place;
    SELECT preselect_host(c.id, %(weigher)s, %(exclude)s, %(vcpus)s, %(memory)s) AS id
    FROM clusters c WHERE c.name = %(cluster)s"""
_PRESELECT_ANY = """SAVEPOINT fast_place;
    SELECT preselect_host(NULL, %(weigher)s, %(exclude)s, %(vcpus)s, %(memory)s) AS id"""


class FastPlacement(NamedTuple):
    """What ``reserve_fast`` placed: the cluster's policy (``name``, ``hypervisor_type``,
    ``weigher``; None: any cluster) and the chosen host's exact load before the reservation."""

    policy: dict[str, Any] | None
    host: HostRecord


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


def reserve_fast(cur: Any, *, task_id: str, vm: str, vcpus: int, memory_mib: int,
                 cluster: str | None, exclude: Sequence[str],
                 check: Callable[[FastPlacement], placement.PlacementRequest]
                 ) -> FastPlacement | None:
    """A create's reservation in one round trip (the SQL function ``reserve_fast``), inserted
    in the caller's transaction, or None when the caller must roll back and take the full path
    (the name is taken or held, the cluster unknown, no host passes by the counters, or the
    exact load fails a filter). ``check`` turns the result into the ``PlacementRequest`` whose
    every filter (``placement.exclusion``) the chosen host's exact load must pass."""
    cur.execute("SELECT * FROM reserve_fast(%s, %s, %s, %s, %s, %s)",
                (task_id, vm, vcpus, memory_mib, cluster, list(exclude)))
    row = cur.fetchone()
    if row["outcome"] != "placed":
        return None
    found = FastPlacement(policy=row["policy"], host=host_record(row["load"]))
    fresh = loads(cur, [found.host], with_groups=False)[0]
    return found if placement.exclusion(fresh, check(found)) is None else None


def _fast(cur: Any, request: placement.PlacementRequest) -> tuple[int, HostRecord] | None:
    params = {"cluster": request.cluster, "weigher": request.weigher,
              "exclude": list(request.exclude), "vcpus": request.vcpus,
              "memory": request.memory_mib}
    cur.execute(_PRESELECT_IN_CLUSTER if request.cluster is not None else _PRESELECT_ANY,
                params)
    row = cur.fetchone()
    if row is not None and row["id"] is not None:
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
