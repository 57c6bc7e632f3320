"""Inventory queries of moving VMs between hosts: record a move, find the VMs a cleared host
sent away, and plan where a clear would send them (the dry run).

Like every writer of a host's load, ``record_move`` locks both hosts' rows first (in id order).
"""

from __future__ import annotations

from taskomatic import placement
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.clusters import placement_policy
from taskomatic.inventory.db import Database
from taskomatic.inventory.disks import copy_needs, storage_reach
from taskomatic.inventory.hosts import read_hosts
from taskomatic.inventory.placement import loads
from taskomatic.inventory.vms import get_vm
from taskomatic.models import PlannedMove, RecordMoveInput, VmRecord
from taskomatic.states import IN_MAINTENANCE, HostState


def record_move(db: Database, inp: RecordMoveInput) -> VmRecord:
    """A VM now lives on ``inp.destination``: move its row and drop the task's reservation, in one
    transaction under both hosts' locks (taken in id order).

    A VM moved off a host being cleared keeps that host as its origin; one moved back to its origin
    forgets it. Recording the same move again only refreshes the state. Raises ``UnknownHost``
    (field ``to``) for an unknown destination and ``UnknownVm`` (field ``name``).
    """
    with db.transaction() as cur:
        cur.execute("SELECT id, name, state FROM hosts WHERE name = ANY(%s) ORDER BY id"
                    " FOR UPDATE", ([inp.source, inp.destination],))
        hosts = {r["name"]: r for r in cur.fetchall()}
        dest = hosts.get(inp.destination)
        if dest is None:
            raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.destination!r}",
                             field="to", host=inp.destination, vm=inp.name)
        source_state = hosts[inp.source]["state"] if inp.source in hosts else HostState.UP
        clearing = source_state in IN_MAINTENANCE
        cur.execute(
            "UPDATE vms SET host_id = %(dest)s, state = %(state)s, updated_at = now(),"
            " origin_host = CASE WHEN origin_host = %(dest_name)s THEN NULL"
            "  WHEN %(clearing)s AND host_id <> %(dest)s THEN COALESCE(origin_host, %(source)s)"
            "  ELSE origin_host END"
            " WHERE name = %(name)s RETURNING name",
            {"dest": dest["id"], "state": inp.state.value, "dest_name": inp.destination,
             "clearing": clearing, "source": inp.source, "name": inp.name})
        if cur.fetchone() is None:
            raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {inp.name!r} in the inventory",
                             field="name", vm=inp.name)
        cur.execute("DELETE FROM reservations WHERE task_id = %s", (inp.task_id,))
    found = get_vm(db, inp.name)
    assert found is not None
    return found.vm


def vms_with_origin(db: Database, host: str, exclude: list[str]) -> list[str]:
    """VMs moved off ``host`` while it was cleared and not yet back (nor in ``exclude``)."""
    with db.transaction() as cur:
        cur.execute("SELECT v.name FROM vms v JOIN hosts h ON h.id = v.host_id"
                    " WHERE v.origin_host = %s AND h.name <> %s AND NOT (v.name = ANY(%s))"
                    " ORDER BY v.name", (host, host, exclude))
        return [r["name"] for r in cur.fetchall()]


def plan_moves(db: Database, host: str, vms: list[str], copy: bool = False
               ) -> list[PlannedMove]:
    """Where placement would put each of ``vms`` if ``host`` were cleared now: ``placement.plan``
    over the current load of the hosts of ``host``'s cluster, with each VM's affinity group and
    the pools of its disks (a VM whose pools no other host sees is "not movable", with the
    reason: ``disks.StorageReach``); with a storage copy (``copy``) the local pools are copied
    (placement's ``takes_copies``). Reads only, without locks: a plan, not a promise."""
    with db.transaction() as cur:
        cur.execute("SELECT v.name, v.vcpus, v.memory_mib, g.name AS group, g.policy"
                    " FROM vms v LEFT JOIN affinity_groups g ON g.id = v.affinity_group_id"
                    " WHERE v.name = ANY(%s)", (vms,))
        rows = {r["name"]: r for r in cur.fetchall()}
        policy = placement_policy(cur, host=host)
        hosts = loads(cur, read_hosts(cur), with_groups=True, with_rooms=copy)
        reach = storage_reach(cur, vms)
        copies = {vm: copy_needs(cur, vm) if copy else () for vm in vms}
    moves = [(vm, None if vm not in rows else placement.PlacementRequest(
        vm=vm, vcpus=rows[vm]["vcpus"], memory_mib=rows[vm]["memory_mib"], exclude=(host,),
        cluster=policy["name"] if policy else None,
        hypervisor_type=policy["hypervisor_type"] if policy else None,
        weigher=policy["weigher"] if policy else "spread", group=rows[vm]["group"],
        group_policy=rows[vm]["policy"] or "anti-affinity",
        pools=reach[vm].names(copy) if vm in reach else frozenset(), copies=copies[vm]))
        for vm in vms]
    unmovable = {vm: why for vm, found in reach.items() if (why := found.not_movable(copy))}
    return [PlannedMove(vm=m.vm, destination=None, reason=unmovable[m.vm])
            if m.vm in unmovable else m for m in placement.plan(moves, hosts)]
