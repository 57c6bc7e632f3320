"""Inventory queries of moving VMs between hosts: record a move, find the VMs a cleared host
sent away, and plan where a clear would send them (the dry run).

Like every writer of a host's load, ``record_move`` locks both hosts' rows first (in id order).
"""

from __future__ import annotations

from taskomatic import placement
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.inventory.disks import storage_reach
from taskomatic.inventory.hosts import read_hosts
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


def plan_moves(db: Database, host: str, vms: list[str]) -> list[PlannedMove]:
    """Where placement would put each of ``vms`` if ``host`` were cleared now: ``placement.plan``
    over the hosts' current load, inside ``host``'s cluster, each VM among the hosts that see
    every pool its disks are in (a VM whose pools no other host sees is "not movable", with the
    reason; ``disks``). Reads only, without locks: a plan, not a promise."""
    with db.transaction() as cur:
        cur.execute("SELECT name, vcpus, memory_mib FROM vms WHERE name = ANY(%s)", (vms,))
        sizes = {r["name"]: placement.VmSize(r["vcpus"], r["memory_mib"])
                 for r in cur.fetchall()}
        hosts = read_hosts(cur)
        reach = storage_reach(cur, vms)
    loads = {h.name: placement.HostLoad.of(h, frozenset(h.pools)) for h in hosts}
    cluster = next((h.cluster for h in hosts if h.name == host), None)
    moves: list[PlannedMove] = []
    for vm in vms:
        found = reach.get(vm)
        seeing = list(loads)
        if found is not None and found.pools:
            reason = found.not_movable(seeing)
            if reason is not None:
                moves.append(PlannedMove(vm=vm, destination=None, reason=reason))
                continue
            seeing = [h for h in seeing if found.sees_all(h)]
        [move] = placement.plan(host, [vm], sizes, [loads[h] for h in seeing], cluster)
        if move.destination is not None:
            size = sizes[vm]
            loads[move.destination] = loads[move.destination].taking(size.vcpus, size.memory_mib)
        moves.append(move)
    return moves
