"""Inventory writes of the worker's host monitor and libvirt event listener.

Hosts that stop answering (``lose_contact`` / ``regain_contact``, the transitions of
``taskomatic.states``) and the states libvirt reports for VMs and pools behind taskomatic's back
(``observe_vm_state`` / ``observe_pool_state``). Like the reconciliation, nothing here touches a
VM or pool that a task holds (a claim on ``vm:NAME`` / ``pool:NAME`` in ``claims``, waiting or
granted): the task owns that truth until it ends. Each function is one transaction.
"""

from __future__ import annotations

from taskomatic.inventory.db import Database
from taskomatic.models import ContactChange, HostState, VmState
from taskomatic.states import HostTransition, check_transition

_NOT_HELD = "NOT EXISTS (SELECT 1 FROM claims c WHERE c.resource = %(prefix)s || {table}.name)"


def lose_contact(db: Database, host: str, reason: str) -> ContactChange:
    """``host`` (if ``up``) becomes ``non_responsive`` with ``reason``; its VMs that no task
    holds become ``unknown`` with the reason "host H non_responsive: <reason>". A host in any
    other state is left alone (``changed`` False)."""
    with db.transaction() as cur:
        cur.execute("SELECT id, state FROM hosts WHERE name = %s FOR UPDATE", (host,))
        row = cur.fetchone()
        if row is None:
            return ContactChange(host=host, changed=False)
        before = HostState(row["state"])
        if before != HostState.UP:
            return ContactChange(host=host, changed=False, state=before)
        after = check_transition(HostTransition.LOSE_CONTACT, host, before)
        cur.execute("UPDATE hosts SET state = %s, state_reason = %s, updated_at = now()"
                    " WHERE id = %s", (after.value, reason, row["id"]))
        cur.execute(
            "UPDATE vms SET state = %(unknown)s, state_reason = %(why)s, updated_at = now()"
            " WHERE host_id = %(host_id)s AND " + _NOT_HELD.format(table="vms") +
            " RETURNING name",
            {"unknown": VmState.UNKNOWN.value, "why": f"host {host} non_responsive: {reason}",
             "host_id": row["id"], "prefix": "vm:"})
        vms = sorted(r["name"] for r in cur.fetchall())
    return ContactChange(host=host, changed=True, state=after, vms=vms)


def regain_contact(db: Database, host: str) -> ContactChange:
    """``host`` (if ``non_responsive``) is ``up`` again; its VMs keep their state until the
    caller records what libvirt says of them (``observe_vm_state``)."""
    with db.transaction() as cur:
        cur.execute("SELECT id, state FROM hosts WHERE name = %s FOR UPDATE", (host,))
        row = cur.fetchone()
        if row is None:
            return ContactChange(host=host, changed=False)
        before = HostState(row["state"])
        if before != HostState.NON_RESPONSIVE:
            return ContactChange(host=host, changed=False, state=before)
        after = check_transition(HostTransition.REGAIN_CONTACT, host, before)
        cur.execute("UPDATE hosts SET state = %s, state_reason = NULL, updated_at = now()"
                    " WHERE id = %s", (after.value, row["id"]))
    return ContactChange(host=host, changed=True, state=after)


def observe_vm_state(db: Database, host: str, vm: str, state: VmState) -> bool:
    """Record ``state`` (what libvirt on ``host`` says now) for VM ``vm`` if the inventory has
    it on ``host``, no task holds it and its recorded state differs; True if a row changed."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE vms SET state = %(state)s, state_reason = NULL, updated_at = now()"
            " WHERE name = %(vm)s AND state <> %(state)s"
            " AND host_id = (SELECT id FROM hosts WHERE name = %(host)s) AND "
            + _NOT_HELD.format(table="vms"),
            {"state": state.value, "vm": vm, "host": host, "prefix": "vm:"})
        return bool(cur.rowcount)


def observe_pool_state(db: Database, host: str, pool: str, active: bool) -> bool:
    """Record a pool on ``host`` as ``active`` or ``inactive`` (libvirt started or stopped it)
    if the inventory has it there, recorded (not still being created), no task holds it and its
    state differs; True if a row changed."""
    state = "active" if active else "inactive"
    with db.transaction() as cur:
        cur.execute(
            "UPDATE storage_pools SET state = %(state)s, updated_at = now()"
            " WHERE name = %(pool)s AND state NOT IN (%(state)s, 'creating')"
            " AND host_id = (SELECT id FROM hosts WHERE name = %(host)s) AND "
            + _NOT_HELD.format(table="storage_pools"),
            {"state": state, "pool": pool, "host": host, "prefix": "pool:"})
        return bool(cur.rowcount)
