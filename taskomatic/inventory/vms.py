"""Inventory queries: hosts, VMs and capacity reservations, each operation one transaction.

Placement is race-free because every writer of a host's load (a reservation, a VM row) first locks
that host's row: two concurrent creates serialize on the host and see each other's reservations,
and a host that entered maintenance is never picked once that change has committed.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import (
    HostRecord,
    HostSpec,
    HostState,
    RecordVmInput,
    Reservation,
    ReserveCapacityInput,
    VmPlacement,
    VmRecord,
    VmState,
)

_HOST_USAGE = """
    SELECT h.name, h.uri, h.state, h.migration_uri, h.vcpus, h.memory_mib,
           COALESCE(v.vcpus, 0) AS used_vcpus, COALESCE(v.memory_mib, 0) AS used_memory_mib,
           COALESCE(v.n, 0) AS vm_count,
           COALESCE(r.vcpus, 0) AS reserved_vcpus, COALESCE(r.memory_mib, 0) AS reserved_memory_mib
    FROM hosts h
    LEFT JOIN (SELECT host_id, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib, COUNT(*) AS n
               FROM vms GROUP BY host_id) v ON v.host_id = h.id
    LEFT JOIN (SELECT host_id, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib
               FROM reservations GROUP BY host_id) r ON r.host_id = h.id
"""

_VM_COLUMNS = """
    SELECT v.name, v.uuid::text AS uuid, h.name AS host, v.vcpus, v.memory_mib, v.state,
           v.origin_host, v.created_at, v.updated_at, h.uri AS host_uri,
           h.state AS host_state, h.migration_uri AS host_migration_uri
    FROM vms v JOIN hosts h ON h.id = v.host_id
"""
_HOST_FIELDS = ("host_uri", "host_state", "host_migration_uri")


def _vm(row: dict[str, Any]) -> VmRecord:
    return VmRecord.model_validate({k: v for k, v in row.items() if k not in _HOST_FIELDS})


# --- hosts -----------------------------------------------------------------------------------


def add_host(db: Database, spec: HostSpec) -> tuple[HostRecord, bool]:
    """Register a host. Adding the same name and URI again is a no-op; returns (host, created)."""
    with db.transaction() as cur:
        cur.execute("SELECT name, uri FROM hosts WHERE name = %s OR uri = %s",
                    (spec.name, spec.uri))
        clash = cur.fetchone()
        if clash is None:
            cur.execute(
                "INSERT INTO hosts (name, uri, vcpus, memory_mib, migration_uri)"
                " VALUES (%s, %s, %s, %s, %s)",
                (spec.name, spec.uri, spec.vcpus, spec.memory_mib, spec.migration_uri),
            )
            created = True
        elif clash["name"] == spec.name and clash["uri"] == spec.uri:
            created = False
        elif clash["name"] == spec.name:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"host {spec.name!r} already exists with URI {clash['uri']}",
                             field="name", host=spec.name)
        else:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"{spec.uri} is already registered as host {clash['name']!r}",
                             field="uri", host=spec.name)
    host = get_host(db, spec.name)
    assert host is not None
    return host, created


def list_hosts(db: Database) -> list[HostRecord]:
    with db.transaction() as cur:
        cur.execute(_HOST_USAGE + " ORDER BY h.name")
        return [HostRecord.model_validate(row) for row in cur.fetchall()]


def get_host(db: Database, name: str) -> HostRecord | None:
    with db.transaction() as cur:
        cur.execute(_HOST_USAGE + " WHERE h.name = %s", (name,))
        row = cur.fetchone()
        return HostRecord.model_validate(row) if row else None


def set_host_state(db: Database, name: str, state: HostState) -> bool:
    with db.transaction() as cur:
        cur.execute("UPDATE hosts SET state = %s, updated_at = now() WHERE name = %s",
                    (state.value, name))
        return bool(cur.rowcount)


# --- VMs -------------------------------------------------------------------------------------


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


def check_new_vm(db: Database, name: str, host: str | None) -> None:
    """Refuse a create early when the name is taken or the host is unknown (advisory only:
    ``reserve_capacity`` re-checks under locks)."""
    with db.transaction() as cur:
        _refuse_taken_name(cur, name)
        if host is not None:
            cur.execute("SELECT 1 FROM hosts WHERE name = %s", (host,))
            if cur.fetchone() is None:
                raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {host!r}", field="host",
                                 host=host, vm=name)


def _refuse_taken_name(cur: Any, name: str, task_id: str | None = None) -> None:
    cur.execute("SELECT h.name AS host FROM vms v JOIN hosts h ON h.id = v.host_id "
                "WHERE v.name = %s", (name,))
    row = cur.fetchone()
    if row:
        raise task_error(ErrorType.DUPLICATE_VM, f"VM {name!r} already exists on {row['host']}",
                         field="name", vm=name)
    cur.execute("SELECT task_id FROM reservations"
                " WHERE vm_name = %s AND task_id IS DISTINCT FROM %s", (name, task_id))
    row = cur.fetchone()
    if row:
        raise task_error(ErrorType.DUPLICATE_VM,
                         f"VM {name!r} is already being created by task {row['task_id']}",
                         field="name", vm=name)


def set_vm_state(db: Database, name: str, state: VmState) -> bool:
    with db.transaction() as cur:
        cur.execute("UPDATE vms SET state = %s, updated_at = now() WHERE name = %s AND state <> %s",
                    (state.value, name, state.value))
        return bool(cur.rowcount)


def remove_vm(db: Database, name: str) -> bool:
    """Delete a VM row (freeing its host's capacity), under the host's lock."""
    with db.transaction() as cur:
        cur.execute("SELECT host_id FROM vms WHERE name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            return False
        cur.execute("SELECT 1 FROM hosts WHERE id = %s FOR UPDATE", (row["host_id"],))
        cur.execute("DELETE FROM vms WHERE name = %s", (name,))
        return True


def record_vm(db: Database, inp: RecordVmInput) -> VmRecord:
    """Finalize a create: insert the VM row and drop the task's reservation, atomically.

    Re-recording the same VM (same name and UUID) only refreshes its state.
    """
    with db.transaction() as cur:
        cur.execute("SELECT id FROM hosts WHERE name = %s FOR UPDATE", (inp.host,))
        host = cur.fetchone()
        if host is None:
            raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.host!r}", field="host",
                             host=inp.host, vm=inp.name)
        cur.execute(
            "INSERT INTO vms (name, uuid, host_id, vcpus, memory_mib, state)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
            " WHERE vms.uuid = EXCLUDED.uuid AND vms.host_id = EXCLUDED.host_id"
            " RETURNING name",
            (inp.name, inp.uuid, host["id"], inp.vcpus, inp.memory_mib, inp.state.value),
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
    """Reserve a VM's vCPUs and memory on a host, in one transaction under host row locks.

    With ``inp.host`` set, only that host is considered; otherwise every host in service is, and
    the least loaded one that fits wins (never one in ``inp.exclude``). Idempotent: a task that
    already holds a reservation gets it back unchanged. ``moving`` reserves room for an existing
    VM about to move there (a migration), so its name is expected to exist.
    """
    try:
        with db.transaction() as cur:
            existing = _reservation_of(cur, inp.task_id)
            if existing is not None:
                return existing
            if not moving:
                _refuse_taken_name(cur, inp.vm_name, inp.task_id)
            candidates = _lock_candidates(cur, inp)
            # An overlapping attempt of this same task may have committed while we waited.
            existing = _reservation_of(cur, inp.task_id)
            if existing is not None:
                return existing
            host = _least_loaded_fit(cur, candidates, inp)
            cur.execute(
                "INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib)"
                " VALUES (%s, %s, %s, %s, %s)",
                (inp.task_id, host["id"], inp.vm_name, inp.vcpus, inp.memory_mib),
            )
            # Checked again after the insert: a create that finalized meanwhile is visible now.
            if not moving:
                _refuse_taken_name(cur, inp.vm_name, inp.task_id)
            return Reservation(task_id=inp.task_id, vm_name=inp.vm_name, host=host["name"],
                               host_uri=host["uri"], vcpus=inp.vcpus, memory_mib=inp.memory_mib)
    except psycopg2.errors.UniqueViolation as err:
        doing = "moved" if moving else "created"
        raise task_error(ErrorType.DUPLICATE_VM,
                         f"VM {inp.vm_name!r} is already being {doing} by another task",
                         field="name", vm=inp.vm_name) from err


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


def _lock_candidates(cur: Any, inp: ReserveCapacityInput) -> list[dict[str, Any]]:
    """Lock and return the hosts this request may use, in id order (a global lock order)."""
    field = inp.host_field
    if inp.host is not None:
        cur.execute("SELECT id, name, uri, state, vcpus, memory_mib FROM hosts"
                    " WHERE name = %s FOR UPDATE", (inp.host,))
        row = cur.fetchone()
        if row is None:
            raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {inp.host!r}", field=field,
                             host=inp.host, vm=inp.vm_name)
        if row["state"] != HostState.UP:
            raise task_error(ErrorType.HOST_NOT_AVAILABLE,
                             f"host {inp.host!r} is in state {row['state']!r}, not 'up'",
                             field=field, host=inp.host, vm=inp.vm_name)
        if inp.host in inp.exclude:
            raise task_error(ErrorType.HOST_NOT_AVAILABLE,
                             f"host {inp.host!r} cannot take {inp.vm_name!r} (it is the source "
                             "or already failed)", field=field, host=inp.host, vm=inp.vm_name)
        return [row]
    cur.execute("SELECT id, name, uri, state, vcpus, memory_mib FROM hosts"
                " WHERE state = 'up' AND NOT (name = ANY(%s)) ORDER BY id FOR UPDATE",
                (list(inp.exclude),))
    rows: list[dict[str, Any]] = cur.fetchall()
    if not rows and inp.exclude:
        raise task_error(ErrorType.NO_CAPACITY, "no other host is in service (excluded: "
                         f"{', '.join(inp.exclude)})", field=field, vm=inp.vm_name)
    if not rows:
        raise task_error(ErrorType.NO_CAPACITY, "no host is in service", field="host",
                         vm=inp.vm_name)
    return rows


def _least_loaded_fit(cur: Any, hosts: list[dict[str, Any]], inp: ReserveCapacityInput
                      ) -> dict[str, Any]:
    cur.execute(
        "SELECT host_id, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib FROM ("
        " SELECT host_id, vcpus, memory_mib FROM vms WHERE host_id = ANY(%(ids)s)"
        " UNION ALL"
        " SELECT host_id, vcpus, memory_mib FROM reservations WHERE host_id = ANY(%(ids)s)"
        ") load GROUP BY host_id",
        {"ids": [h["id"] for h in hosts]},
    )
    load = {row["host_id"]: row for row in cur.fetchall()}
    best: tuple[float, float, str] | None = None
    chosen: dict[str, Any] | None = None
    roomiest: tuple[int, str] = (-1, "")  # the host with most free memory, for the error
    for host in hosts:
        used = load.get(host["id"], {"vcpus": 0, "memory_mib": 0})
        free_vcpus = host["vcpus"] - used["vcpus"]
        free_memory = host["memory_mib"] - used["memory_mib"]
        if free_vcpus < inp.vcpus or free_memory < inp.memory_mib:
            roomiest = max(roomiest, (free_memory, f"roomiest: {host['name']} with {free_vcpus}"
                                                   f" vCPUs / {free_memory} MiB free"))
            continue
        rank = (used["memory_mib"] / host["memory_mib"], used["vcpus"] / host["vcpus"],
                host["name"])
        if best is None or rank < best:
            best, chosen = rank, host
    if chosen is None:
        where = f"host {inp.host!r}" if inp.host else "no host in service"
        raise task_error(ErrorType.NO_CAPACITY,
                         f"{where} lacks room for {inp.vcpus} vCPUs / {inp.memory_mib} MiB"
                         f" ({roomiest[1]})", field=inp.host_field if inp.host else "memory_mib",
                         host=inp.host, vm=inp.vm_name)
    return chosen
