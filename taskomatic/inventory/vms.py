"""Inventory queries of VMs and the capacity reservations that place them, each operation one
transaction.

Placement is race-free because every writer of a host's load (a reservation, a VM row) first locks
that host's row: two concurrent creates serialize on the host and see each other's reservations,
and a host that entered maintenance is never picked once that change has committed. Which host a
reservation gets is ``taskomatic.placement``'s choice, over the rows locked here.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from taskomatic import placement
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.clusters import lock_group, placement_policy
from taskomatic.inventory.db import Database
from taskomatic.inventory.disks import copy_needs, refuse_unreachable_storage, storage_reach
from taskomatic.inventory.placement import place, reserve_fast
from taskomatic.models import (
    RecordVmInput,
    Reservation,
    ReserveCapacityInput,
    VmPlacement,
    VmRecord,
    VmState,
)
from taskomatic.states import IN_MAINTENANCE

_VM_COLUMNS = """
    SELECT v.name, v.uuid::text AS uuid, h.name AS host, v.vcpus, v.memory_mib, v.state,
           v.state_reason, v.origin_host, g.name AS group, v.created_at, v.updated_at,
           h.uri AS host_uri,
           h.state AS host_state, h.migration_uri AS host_migration_uri
    FROM vms v JOIN hosts h ON h.id = v.host_id
    LEFT JOIN affinity_groups g ON g.id = v.affinity_group_id
"""
_HOST_FIELDS = ("host_uri", "host_state", "host_migration_uri")


def _vm(row: dict[str, Any]) -> VmRecord:
    return VmRecord.model_validate({k: v for k, v in row.items() if k not in _HOST_FIELDS})


def list_vms(db: Database, host: str | None = None) -> list[VmRecord]:
    with db.transaction() as cur:
        if host is None:
            cur.execute(_VM_COLUMNS + " ORDER BY v.name")
        else:
            cur.execute(_VM_COLUMNS + " WHERE h.name = %s ORDER BY v.name", (host,))
        return [_vm(row) for row in cur.fetchall()]


def get_vm(db: Database, name: str) -> VmPlacement | None:
    with db.transaction() as cur:
        cur.execute(_VM_COLUMNS + " WHERE v.name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            return None
        return VmPlacement(vm=_vm(row), host_uri=row["host_uri"], host_state=row["host_state"],
                           host_migration_uri=row["host_migration_uri"])


def check_new_vm(db: Database, name: str, host: str | None, cluster: str | None = None,
                 group: str | None = None, group_policy: str | None = None) -> None:
    """Refuse a create early when the name is taken, the host or cluster unknown, the host not
    in the cluster, or the affinity group of another policy (advisory only:
    ``reserve_capacity`` re-checks under locks)."""
    with db.transaction() as cur:
        _refuse_taken_name(cur, name)
        cur.execute("SELECT policy FROM affinity_groups WHERE name = %s", (group,))
        found = cur.fetchone()
        if group_policy is not None and found is not None and found["policy"] != group_policy:
            raise task_error(ErrorType.INVALID_REQUEST, f"affinity group {group!r} is "
                             f"{found['policy']!r}, not {group_policy!r}", field="group_policy",
                             vm=name)
        policy = placement_policy(cur, cluster=cluster) if cluster else None
        if host is not None:
            cur.execute("SELECT c.name AS cluster FROM hosts h JOIN clusters c"
                        " ON c.id = h.cluster_id WHERE h.name = %s", (host,))
            row = cur.fetchone()
            if row is None:
                raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {host!r}", field="host",
                                 host=host, vm=name)
            if policy is not None and row["cluster"] != policy["name"]:
                raise task_error(ErrorType.INVALID_REQUEST,
                                 f"host {host!r} is in cluster {row['cluster']!r}, not "
                                 f"{cluster!r}", field="host", host=host, vm=name)


def _refuse_taken_name(cur: Any, name: str, task_id: str | None = None) -> bool:
    """Raise ``DuplicateVm`` (field ``name``) when VM ``name`` is recorded, or reserved by
    another task than ``task_id``; else whether ``task_id`` holds a reservation. One query."""
    cur.execute(
        "SELECT (SELECT h.name FROM vms v JOIN hosts h ON h.id = v.host_id"
        "        WHERE v.name = %(name)s) AS host,"
        " (SELECT task_id FROM reservations WHERE vm_name = %(name)s"
        "  AND task_id IS DISTINCT FROM %(task)s LIMIT 1) AS other,"
        " EXISTS (SELECT 1 FROM reservations WHERE task_id = %(task)s) AS held",
        {"name": name, "task": task_id})
    row = cur.fetchone()
    if row["host"]:
        raise task_error(ErrorType.DUPLICATE_VM, f"VM {name!r} already exists on {row['host']}",
                         field="name", vm=name)
    if row["other"]:
        raise task_error(ErrorType.DUPLICATE_VM,
                         f"VM {name!r} is already being created by task {row['other']}",
                         field="name", vm=name)
    return bool(row["held"])


def set_vm_state(db: Database, name: str, state: VmState) -> bool:
    """Record VM ``name``'s power state; False if it already had it (or has no row)."""
    with db.transaction() as cur:
        return set_vm_state_in(cur, name, state)


def set_vm_state_in(cur: Any, name: str, state: VmState) -> bool:
    """``set_vm_state`` inside the caller's transaction (cursor ``cur``)."""
    cur.execute("UPDATE vms SET state = %s, state_reason = NULL, updated_at = now()"
                " WHERE name = %s AND state <> %s", (state.value, name, state.value))
    return bool(cur.rowcount)


def remove_vm(db: Database, name: str) -> bool:
    """Delete a VM row (freeing its host's capacity), under the host's lock."""
    with db.transaction() as cur:
        return remove_vm_in(cur, name)


def remove_vm_in(cur: Any, name: str) -> bool:
    """``remove_vm`` inside the caller's transaction (cursor ``cur``)."""
    cur.execute("SELECT host_id FROM vms WHERE name = %s", (name,))
    row = cur.fetchone()
    if row is None:
        return False
    cur.execute("SELECT 1 FROM hosts WHERE id = %s FOR UPDATE", (row["host_id"],))
    cur.execute("DELETE FROM vms WHERE name = %s", (name,))
    return True


def relocate_vm(db: Database, name: str, uuid: str, source: str, destination: str,
                state: VmState) -> bool:
    """Record VM ``name`` (``uuid``) on ``destination`` in ``state``, where libvirt has it: the
    reconciliation's repair of a move whose task ended before recording it. Its capacity moves
    with it (a host's load is the sum of its VM rows).

    Only if the inventory still has that VM on ``source`` and no task holds or waits for
    ``vm:NAME`` (a task working on the VM records its own outcome); returns True if it moved.
    Under both hosts' row locks, in id order. As with a recorded move, a VM that left a host in
    maintenance keeps that host as its origin, and one back on its origin forgets it.
    """
    with db.transaction() as cur:
        cur.execute("SELECT id, name, state FROM hosts WHERE name = ANY(%s) ORDER BY id"
                    " FOR UPDATE", ([source, destination],))
        hosts = {row["name"]: row for row in cur.fetchall()}
        if source not in hosts or destination not in hosts:
            return False
        cur.execute(
            "UPDATE vms SET host_id = %(dest)s, state = %(state)s, updated_at = now(),"
            " origin_host = CASE WHEN origin_host = %(dest_name)s THEN NULL"
            "  WHEN %(clearing)s THEN COALESCE(origin_host, %(source)s) ELSE origin_host END"
            " WHERE name = %(name)s AND uuid = %(uuid)s::uuid AND host_id = %(src)s"
            " AND NOT EXISTS (SELECT 1 FROM claims WHERE resource = %(resource)s)",
            {"dest": hosts[destination]["id"], "src": hosts[source]["id"],
             "state": state.value, "dest_name": destination, "source": source,
             "clearing": hosts[source]["state"] in IN_MAINTENANCE, "name": name,
             "uuid": uuid, "resource": f"vm:{name}"})
        return bool(cur.rowcount)


def record_vm(db: Database, inp: RecordVmInput) -> VmRecord:
    """Finalize a create: insert the VM row and drop the task's reservation, atomically.

    Re-recording the same VM (same name and UUID) only refreshes its state.
    """
    with db.transaction() as cur:
        return record_vm_in(cur, inp)


def record_vm_in(cur: Any, inp: RecordVmInput) -> VmRecord:
    """``record_vm`` inside the caller's transaction (cursor ``cur``)."""
    cur.execute("SELECT id FROM hosts WHERE name = %s FOR UPDATE", (inp.host,))
    host = cur.fetchone()
    if host is None:
        raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.host!r}", field="host",
                         host=inp.host, vm=inp.name)
    cur.execute(
        "INSERT INTO vms (name, uuid, host_id, vcpus, memory_mib, state, affinity_group_id)"
        " VALUES (%s, %s, %s, %s, %s, %s,"
        " (SELECT affinity_group_id FROM reservations WHERE task_id = %s))"
        " ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
        " WHERE vms.uuid = EXCLUDED.uuid AND vms.host_id = EXCLUDED.host_id"
        " RETURNING name",
        (inp.name, inp.uuid, host["id"], inp.vcpus, inp.memory_mib, inp.state.value,
         inp.task_id),
    )
    if cur.fetchone() is None:
        raise task_error(ErrorType.DUPLICATE_VM,
                         f"another VM named {inp.name!r} is already recorded", field="name",
                         vm=inp.name, host=inp.host)
    cur.execute("DELETE FROM reservations WHERE task_id = %s", (inp.task_id,))
    cur.execute(_VM_COLUMNS + " WHERE v.name = %s", (inp.name,))
    return _vm(cur.fetchone())


# --- capacity --------------------------------------------------------------------------------


def reserve_capacity(db: Database, inp: ReserveCapacityInput, *, moving: bool = False
                     ) -> Reservation:
    """Reserve a VM's vCPUs and memory on a host, in one transaction under the chosen host's
    row lock.

    The placement happens in the VM's cluster (a move: its source's; a create: ``inp.cluster``
    or the pinned host's; else any), with its affinity group (its row locked: placements of one
    group run one at a time); ``inventory.placement.place`` finds the host (never one in
    ``inp.exclude``) and locks only it; ``placement.choose``'s typed errors (``UnknownHost``,
    ``HostNotAvailable``, ``NoCapacity``) propagate. Idempotent: a task that
    already holds a reservation gets it back unchanged. ``moving`` reserves room for an existing
    VM about to move there (a migration), so its name is expected to exist; otherwise a taken
    name is ``DuplicateVm``. A moving VM goes only to a host that sees every pool its disks are
    in (placement's ``sees_pools``), or with ``inp.copy_storage`` every shared one and a local
    pool with room for copies of the others (``takes_copies``);
    ``disks.refuse_unreachable_storage`` says why not
    (``NotMigratable``) when no other host, or not the pinned one, sees them.

    The common case (a create without a group or pinned host) is first tried in one round
    trip (``inventory.placement.reserve_fast``, its result checked by every filter of
    ``placement``); anything else than a placement it can make takes this full path.
    """
    if not moving and inp.host is None and inp.group is None:
        made = _reserve_in_one_call(db, inp)
        if made is not None:
            return made
    try:
        with db.transaction() as cur:
            held = (_refuse_taken_name(cur, inp.vm_name, inp.task_id) if not moving
                    else _reservation_of(cur, inp.task_id) is not None)
            existing = _reservation_of(cur, inp.task_id) if held else None
            if existing is not None:
                return existing
            group = lock_group(cur, vm=inp.vm_name, group=inp.group, policy=inp.group_policy,
                               moving=moving)
            policy = placement_policy(cur, cluster=inp.cluster,
                                      vm=inp.vm_name if moving else None, host=inp.host)
            reach = storage_reach(cur, [inp.vm_name]).get(inp.vm_name) if moving else None
            if reach is not None:  # a VM moves only to a host that sees its disks' pools
                refuse_unreachable_storage(cur, reach, inp.host, inp.host_field,
                                           inp.copy_storage)
            request = _request(
                inp, policy, group,
                reach.names(inp.copy_storage) if reach else frozenset(inp.pools),
                copy_needs(cur, inp.vm_name) if moving and inp.copy_storage else ())
            host_id, chosen = place(cur, request)
            cur.execute(
                "INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib,"
                " affinity_group_id) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (task_id) DO NOTHING RETURNING task_id",
                (inp.task_id, host_id, inp.vm_name, inp.vcpus, inp.memory_mib,
                 group["id"] if group else None),
            )
            if cur.fetchone() is None:  # an overlapping attempt of this same task committed
                existing = _reservation_of(cur, inp.task_id)
                assert existing is not None
                return existing
            # Checked again after the insert: a create that finalized meanwhile is visible now.
            if not moving:
                _refuse_taken_name(cur, inp.vm_name, inp.task_id)
            return Reservation(task_id=inp.task_id, vm_name=inp.vm_name, host=chosen.name,
                               host_uri=chosen.uri, vcpus=inp.vcpus, memory_mib=inp.memory_mib)
    except psycopg2.errors.UniqueViolation as err:
        doing = "moved" if moving else "created"
        raise task_error(ErrorType.DUPLICATE_VM,
                         f"VM {inp.vm_name!r} is already being {doing} by another task",
                         field="name", vm=inp.vm_name) from err


class _FullPath(Exception):
    """The one-call placement did not place: its transaction is rolled back."""


def _reserve_in_one_call(db: Database, inp: ReserveCapacityInput) -> Reservation | None:
    """``inp``'s reservation by ``reserve_fast``, committed, or None (nothing changed): the
    full path decides."""
    try:
        with db.transaction() as cur:
            found = reserve_fast(
                cur, task_id=inp.task_id, vm=inp.vm_name, vcpus=inp.vcpus,
                memory_mib=inp.memory_mib, cluster=inp.cluster, exclude=inp.exclude,
                check=lambda fast: _request(inp, fast.policy, None, frozenset(inp.pools)))
            if found is None:
                raise _FullPath
            return Reservation(task_id=inp.task_id, vm_name=inp.vm_name, host=found.host.name,
                               host_uri=found.host.uri, vcpus=inp.vcpus,
                               memory_mib=inp.memory_mib)
    except _FullPath:
        return None


def _request(inp: ReserveCapacityInput, policy: dict[str, Any] | None,
             group: dict[str, Any] | None, pools: frozenset[str],
             copies: tuple[placement.CopyNeed, ...] = ()) -> placement.PlacementRequest:
    """The placement request of ``inp`` in cluster ``policy`` (its row: name, hypervisor type,
    weigher; None: any cluster), with affinity group ``group`` (its row, or None), for a VM
    whose disks are in ``pools`` and, moving with a storage copy, needs ``copies``."""
    return placement.PlacementRequest(
        vm=inp.vm_name, vcpus=inp.vcpus, memory_mib=inp.memory_mib, host=inp.host,
        exclude=tuple(inp.exclude), field=inp.host_field,
        cluster=policy["name"] if policy else None,
        hypervisor_type=policy["hypervisor_type"] if policy else None,
        weigher=policy["weigher"] if policy else "spread",
        group=group["name"] if group else None,
        group_policy=group["policy"] if group else "anti-affinity", pools=pools, copies=copies)


def release_capacity(db: Database, task_id: str) -> Reservation | None:
    """Drop a task's reservation; returns what was released (None if it held none)."""
    with db.transaction() as cur:
        existing = _reservation_of(cur, task_id)
        if existing is not None:
            cur.execute("DELETE FROM reservations WHERE task_id = %s", (task_id,))
        return existing


def _reservation_of(cur: Any, task_id: str) -> Reservation | None:
    cur.execute(
        "SELECT r.task_id, r.vm_name, h.name AS host, h.uri AS host_uri, r.vcpus, r.memory_mib"
        " FROM reservations r JOIN hosts h ON h.id = r.host_id WHERE r.task_id = %s",
        (task_id,),
    )
    row = cur.fetchone()
    return Reservation.model_validate(row) if row else None
