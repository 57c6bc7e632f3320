"""Inventory queries of moving VMs: maintenance, moves, origins, and dry-run plans.

Like ``inventory``, every writer of a host's load locks the host's row first, so entering
maintenance is atomic with respect to placement: once ``begin_maintenance`` has committed, no
reservation can land on the host, and the reservations it saw are the only tasks placed there.
"""

from __future__ import annotations

from typing import Any

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import (
    BeginMaintenanceResult,
    HostState,
    HostStateResult,
    PlannedMove,
    RecordMoveInput,
    SetHostStateInput,
    VmRecord,
)

_IN_MAINTENANCE = (HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED)


def _lock_host(cur: Any, name: str, field: str = "host") -> dict[str, Any]:
    cur.execute("SELECT id, name, uri, migration_uri, state FROM hosts WHERE name = %s"
                " FOR UPDATE", (name,))
    row: dict[str, Any] | None = cur.fetchone()
    if row is None:
        raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {name!r}", field=field,
                         host=name)
    return row


def begin_maintenance(db: Database, host: str) -> BeginMaintenanceResult:
    """Put ``host`` in maintenance and list the tasks that placed work on it before that commit.

    Idempotent: a host already in maintenance stays there (its state before is reported).
    """
    with db.transaction() as cur:
        row = _lock_host(cur, host)
        if row["state"] == HostState.DOWN:
            raise task_error(ErrorType.HOST_NOT_AVAILABLE,
                             f"host {host!r} is down: its VMs cannot be reached to move them",
                             field="host", host=host)
        cur.execute("UPDATE hosts SET state = 'maintenance', updated_at = now() WHERE id = %s",
                    (row["id"],))
        cur.execute("SELECT task_id FROM reservations WHERE host_id = %s ORDER BY task_id",
                    (row["id"],))
        tasks = [r["task_id"] for r in cur.fetchall()]
    return BeginMaintenanceResult(host=host, uri=row["uri"], migration_uri=row["migration_uri"],
                                  previous_state=row["state"], placed_tasks=tasks)


def change_host_state(db: Database, inp: SetHostStateInput) -> HostStateResult:
    """Change a host's state, refusing unless it is in one of ``inp.allowed_from`` (if given)."""
    with db.transaction() as cur:
        row = _lock_host(cur, inp.host)
        before = HostState(row["state"])
        if inp.allowed_from and before not in inp.allowed_from and before != inp.state:
            allowed = ", ".join(s.value for s in inp.allowed_from)
            raise task_error(ErrorType.INVALID_OPERATION,
                             f"host {inp.host!r} is {before.value}; expected one of {allowed}",
                             field="host", host=inp.host)
        cur.execute("UPDATE hosts SET state = %s, updated_at = now() WHERE id = %s",
                    (inp.state.value, row["id"]))
    detail = (f"{inp.host} {before.value} → {inp.state.value}" if before != inp.state
              else f"{inp.host} already {inp.state.value}")
    return HostStateResult(host=inp.host, state=inp.state, previous_state=before, detail=detail)


def record_move(db: Database, inp: RecordMoveInput) -> VmRecord:
    """A VM now lives on ``inp.destination``: move its row and drop the task's reservation, in one
    transaction under both hosts' locks (taken in id order).

    A VM moved off a host being cleared keeps that host as its origin; one moved back to its origin
    forgets it. Recording the same move again only refreshes the state.
    """
    from taskomatic.inventory.vms import get_vm  # one module's queries, one place

    with db.transaction() as cur:
        cur.execute("SELECT id, name, state FROM hosts WHERE name = ANY(%s) ORDER BY id"
                    " FOR UPDATE", ([inp.source, inp.destination],))
        hosts = {r["name"]: r for r in cur.fetchall()}
        dest = hosts.get(inp.destination)
        if dest is None:
            raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.destination!r}",
                             field="to", host=inp.destination, vm=inp.name)
        source_state = hosts[inp.source]["state"] if inp.source in hosts else HostState.UP
        clearing = source_state in _IN_MAINTENANCE
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
    """Where placement would put each VM if ``host`` were cleared now (reads only).

    Same rule as ``reserve_capacity``: hosts in service other than ``host``, least loaded first,
    each planned move counted against its destination for the next.
    """
    with db.transaction() as cur:
        cur.execute("SELECT name, vcpus, memory_mib FROM vms WHERE name = ANY(%s)", (vms,))
        shapes = {r["name"]: r for r in cur.fetchall()}
        cur.execute(
            "SELECT h.name, h.vcpus, h.memory_mib,"
            " COALESCE((SELECT SUM(vcpus) FROM vms WHERE host_id = h.id), 0)"
            " + COALESCE((SELECT SUM(vcpus) FROM reservations WHERE host_id = h.id), 0) AS uv,"
            " COALESCE((SELECT SUM(memory_mib) FROM vms WHERE host_id = h.id), 0)"
            " + COALESCE((SELECT SUM(memory_mib) FROM reservations WHERE host_id = h.id), 0)"
            " AS um FROM hosts h WHERE h.state = 'up' AND h.name <> %s ORDER BY h.id", (host,))
        load = {r["name"]: [r["vcpus"], r["memory_mib"], int(r["uv"]), int(r["um"])]
                for r in cur.fetchall()}
    plan: list[PlannedMove] = []
    for name in vms:
        shape = shapes.get(name)
        if shape is None:
            plan.append(PlannedMove(vm=name, destination=None, reason="not in the inventory"))
            continue
        fits = [(lm[3] / lm[1], lm[2] / lm[0], h) for h, lm in load.items()
                if lm[0] - lm[2] >= shape["vcpus"] and lm[1] - lm[3] >= shape["memory_mib"]]
        if not fits:
            plan.append(PlannedMove(vm=name, destination=None,
                                    reason=f"no host in service has room for {shape['vcpus']}"
                                           f" vCPUs / {shape['memory_mib']} MiB"))
            continue
        dest = min(fits)[2]
        load[dest][2] += shape["vcpus"]
        load[dest][3] += shape["memory_mib"]
        plan.append(PlannedMove(vm=name, destination=dest))
    return plan
