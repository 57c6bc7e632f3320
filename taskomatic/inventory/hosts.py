"""Inventory queries of hosts: register, list, read their load, change their state.

Every writer of a host's load or state locks the host's row first, so a state change is atomic
with respect to placement: once ``begin_maintenance`` has committed, no reservation can land on
the host, and the reservations it saw are the only tasks placed there. Transactions that lock
several hosts take them in id order (``lock_hosts``), so they never deadlock each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.clusters import join_cluster
from taskomatic.inventory.db import Database
from taskomatic.models import (
    BeginMaintenanceResult,
    HostFacts,
    HostRecord,
    HostSpec,
    HostStateResult,
)
from taskomatic.states import TRANSITIONS, HostState, HostTransition, check_transition
from taskomatic.uris import canonical_uri, uri_driver

# The one host-load query: each host with its capacity, what its VMs use, what the
# reservations of tasks still placing VMs there hold, and the pools it sees (the view
# ``host_loads``, migration 0013, which placement's fast path reads too).
_HOST_LOAD = """
    SELECT * FROM host_loads
    WHERE (%(name)s::text IS NULL OR name = %(name)s)
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
      AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s)
    ORDER BY name
"""


def read_hosts(cur: Any, *, name: str | None = None, ids: Sequence[int] | None = None,
               cluster: str | None = None) -> list[HostRecord]:
    """Hosts with their load (VMs and reservations), by name: all, the one named, those of
    ``ids`` or of ``cluster``. Reads only; a caller that places work locks the row it changes
    (``lock_hosts``) and reads it again."""
    cur.execute(_HOST_LOAD, {"name": name, "ids": list(ids) if ids is not None else None,
                             "cluster": cluster})
    return [host_record(row) for row in cur.fetchall()]


def host_record(row: dict[str, Any]) -> HostRecord:
    """A ``host_loads`` row (its ``id`` dropped) as a ``HostRecord``."""
    return HostRecord.model_validate({k: v for k, v in row.items() if k != "id"})


def lock_hosts(cur: Any, name: str | None = None, cluster: str | None = None
               ) -> dict[str, int]:
    """Lock the host named ``name`` (None: every host of ``cluster``; both None: every host)
    ``FOR UPDATE``, in id order (the global lock order); returns name → id of the rows locked
    (empty for an unknown name)."""
    cur.execute("SELECT h.id, h.name FROM hosts h JOIN clusters c ON c.id = h.cluster_id"
                " WHERE (%(name)s::text IS NULL OR h.name = %(name)s)"
                " AND (%(cluster)s::text IS NULL OR c.name = %(cluster)s)"
                " ORDER BY h.id FOR UPDATE OF h", {"name": name, "cluster": cluster})
    return {row["name"]: row["id"] for row in cur.fetchall()}


def add_host(db: Database, spec: HostSpec, facts: HostFacts | None = None
             ) -> tuple[HostRecord, bool]:
    """Register a host in its cluster; returns (host, created). ``facts`` is what libvirt says
    of it, when the caller read them (``taskomatic.hypervisor.identity.host_facts``): its
    identity (one hypervisor is one host), driver, CPU model, CPUs and memory. Without facts the
    driver is the URI's (``uri_driver``) and the capacity must be explicit.

    The host joins ``spec.cluster`` (``clusters.join_cluster``: its driver, and CPU model if the
    cluster has a baseline, must match; else ``InvalidRequest`` on ``cluster`` / ``cpu_model``).
    Its capacity is ``spec.vcpus`` / ``spec.memory_mib`` when given, else libvirt's CPUs and
    memory times the cluster's overcommit ratios; neither is ``InvalidRequest`` on ``vcpus`` or
    ``memory_mib``.

    Adding the same name and URI again is a no-op, which records ``identity`` for a host
    registered without one (or re-pointed to another hypervisor). Raises ``InvalidRequest``
    naming the existing host: on ``name`` when the name is taken with another URI; on ``uri``
    when the URI, another spelling of it (``canonical_uri``: ``/./``, ``//``) or the hypervisor
    ``identity`` belongs to another host. Registrations run one at a time (an advisory lock),
    so two spellings of one URI cannot both get in at once.
    """
    canonical = _canonical(spec.uri)
    identity = facts.identity if facts is not None else None
    with db.transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRATION_LOCK_KEY,))
        cur.execute("SELECT h.id, h.name, h.uri, h.hypervisor_id, c.name AS cluster"
                    " FROM hosts h JOIN clusters c ON c.id = h.cluster_id ORDER BY h.id")
        rows: list[dict[str, Any]] = cur.fetchall()
        same = next((r for r in rows if r["name"] == spec.name), None)
        if same is not None and same["uri"] != spec.uri:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"host {spec.name!r} already exists with URI {same['uri']}",
                             field="name", host=spec.name)
        others = [r for r in rows if r is not same]
        if same is None:
            _refuse_another_spelling(others, spec, canonical)
        if identity is not None:
            _refuse_same_hypervisor(others, spec, identity)
        if same is None:
            _refuse_unknown_capacity(spec, facts)
            cluster = join_cluster(cur, spec.name, spec.cluster,
                                   facts.hypervisor_type if facts else uri_driver(spec.uri),
                                   facts.cpu_model if facts else None)
            cur.execute(
                "INSERT INTO hosts (name, uri, cluster_id, vcpus, memory_mib, cpus,"
                " physical_memory_mib, cpu_model, migration_uri, hypervisor_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (spec.name, spec.uri, cluster["id"], spec.vcpus, spec.memory_mib,
                 facts.cpus if facts else None, facts.memory_mib if facts else None,
                 facts.cpu_model if facts else None, spec.migration_uri, identity))
        elif spec.cluster is not None and spec.cluster != same["cluster"]:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"host {spec.name!r} is already in cluster {same['cluster']!r}"
                             " (a host does not change cluster)", field="cluster",
                             host=spec.name)
        elif identity is not None and same["hypervisor_id"] != identity:
            cur.execute("UPDATE hosts SET hypervisor_id = %s, updated_at = now() WHERE id = %s",
                        (identity, same["id"]))
    host = get_host(db, spec.name)
    assert host is not None
    return host, same is None


_REGISTRATION_LOCK_KEY = 0x7A5C0_0002  # beside the migrations' 0x7A5C0_0001 (inventory.db)


def _refuse_unknown_capacity(spec: HostSpec, facts: HostFacts | None) -> None:
    if facts is not None:
        return
    for field, value in (("vcpus", spec.vcpus), ("memory_mib", spec.memory_mib)):
        if value is None:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"give the capacity of host {spec.name!r}, or let host add read it"
                             " from libvirt (without --no-probe)", field=field, host=spec.name)


def _canonical(uri: str) -> str | None:
    try:
        return canonical_uri(uri)
    except ValueError:  # a row written by hand: compared as it is spelled only
        return None


def _refuse_another_spelling(rows: list[dict[str, Any]], spec: HostSpec,
                             canonical: str | None) -> None:
    for row in rows:
        if row["uri"] == spec.uri:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"{spec.uri} is already registered as host {row['name']!r}",
                             field="uri", host=spec.name)
        if canonical is not None and _canonical(row["uri"]) == canonical:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"{spec.uri} is another spelling of {row['uri']}, already "
                             f"registered as host {row['name']!r}", field="uri", host=spec.name)


def _refuse_same_hypervisor(rows: list[dict[str, Any]], spec: HostSpec, identity: str) -> None:
    for row in rows:
        if row["hypervisor_id"] == identity:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"{spec.uri} reaches the hypervisor already registered as host "
                             f"{row['name']!r} ({row['uri']}; identity {identity})",
                             field="uri", host=spec.name)


def list_hosts(db: Database) -> list[HostRecord]:
    """Every host with its load, by name."""
    with db.transaction() as cur:
        return read_hosts(cur)


def get_host(db: Database, name: str) -> HostRecord | None:
    """One host with its load, or None if there is no host of that name."""
    with db.transaction() as cur:
        found = read_hosts(cur, name=name)
        return found[0] if found else None


def set_host_state(db: Database, host: str, transition: HostTransition) -> HostStateResult:
    """Apply ``transition`` (``taskomatic.states``) to ``host`` under its row lock.

    Idempotent: a host already in the transition's target state stays there ("already …").
    Raises ``UnknownHost`` for an unknown host and ``InvalidOperation`` (field ``host``) when
    the transition may not start from the host's state.
    """
    with db.transaction() as cur:
        row = _lock_host(cur, host)
        before = HostState(row["state"])
        after = check_transition(transition, host, before)
        _set_state(cur, row["id"], after)
    detail = (f"{host} {before.value} → {after.value}" if before != after
              else f"{host} already {after.value}")
    return HostStateResult(host=host, state=after, previous_state=before, detail=detail)


def begin_maintenance(db: Database, host: str) -> BeginMaintenanceResult:
    """Put ``host`` in maintenance (``enter_maintenance``) and list the tasks that placed work
    on it before that commit.

    Idempotent: a host already in maintenance stays there (its state before is reported).
    Raises ``UnknownHost``, or ``HostNotAvailable`` for a host that is down (its VMs cannot be
    reached to move them).
    """
    transition = HostTransition.ENTER_MAINTENANCE
    with db.transaction() as cur:
        row = _lock_host(cur, host)
        before = HostState(row["state"])
        if not TRANSITIONS[transition].allows(before):
            raise task_error(ErrorType.HOST_NOT_AVAILABLE, unreachable_host(host, row),
                             field="host", host=host)
        _set_state(cur, row["id"], check_transition(transition, host, before))
        cur.execute("SELECT task_id FROM reservations WHERE host_id = %s ORDER BY task_id",
                    (row["id"],))
        tasks = [r["task_id"] for r in cur.fetchall()]
    return BeginMaintenanceResult(host=host, uri=row["uri"], migration_uri=row["migration_uri"],
                                  previous_state=before, placed_tasks=tasks)


def unreachable_host(host: str, row: dict[str, Any]) -> str:
    """What a clear of ``host`` (a row with ``state`` and ``state_reason``, down or
    non_responsive) can and cannot do, for the error that refuses it."""
    if row["state"] != HostState.NON_RESPONSIVE:
        return f"host {host!r} is {row['state']}: its VMs cannot be reached to move them"
    return (f"host {host!r} is non_responsive ({row.get('state_reason') or 'no answer'}): "
            "its VMs cannot be moved off it (a migration needs the source's libvirtd) and are "
            "recorded 'unknown'; nothing was changed. It becomes up by itself when it answers "
            "again: clear it then. If it will not come back, its VMs are recovered by "
            "starting them elsewhere from their disks; no task can do that safely while the "
            "host may still run them")


def _lock_host(cur: Any, name: str) -> dict[str, Any]:
    cur.execute("SELECT id, name, uri, migration_uri, state, state_reason FROM hosts"
                " WHERE name = %s"
                " FOR UPDATE", (name,))
    row: dict[str, Any] | None = cur.fetchone()
    if row is None:
        raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {name!r}", field="host",
                         host=name)
    return row


def _set_state(cur: Any, host_id: int, state: HostState) -> None:
    cur.execute("UPDATE hosts SET state = %s, state_reason = NULL, updated_at = now()"
                " WHERE id = %s", (state.value, host_id))
