"""Inventory writes of the worker's host monitor and libvirt event listener.

Hosts that stop answering (``lose_contact`` / ``regain_contact``, the transitions of
``taskomatic.states``) and the states libvirt reports for VMs and pools behind taskomatic's back
(``observe_vm_state`` / ``observe_pool_state``). Like the reconciliation, nothing here touches a
VM or pool that a task holds (a claim on ``vm:NAME`` / ``pool:NAME`` in ``claims``, waiting or
granted): the task owns that truth until it ends. Each function is one transaction.
"""

from __future__ import annotations

from typing import Any

from taskomatic.inventory.db import Database
from taskomatic.models import ContactChange, HostState, VmState
from taskomatic.states import TRANSITIONS, HostTransition

_NOT_HELD = "NOT EXISTS (SELECT 1 FROM claims c WHERE c.resource = %(prefix)s || {table}.name)"


def lose_contact(db: Database, host: str, reason: str) -> ContactChange:
    """``host`` (if ``up``) becomes ``non_responsive`` with ``reason``; its VMs that no task
    holds become ``unknown`` with the reason "host H non_responsive: <reason>". A host in any
    other state is left alone (``changed`` False)."""
    with db.transaction() as cur:
        done = _transition(cur, host, HostTransition.LOSE_CONTACT, reason)
        if isinstance(done, ContactChange):
            return done
        cur.execute(
            "UPDATE vms SET state = %(unknown)s, state_reason = %(why)s, updated_at = now()"
            " WHERE host_id = %(host_id)s AND " + _NOT_HELD.format(table="vms") +
            " RETURNING name",
            {"unknown": VmState.UNKNOWN.value, "why": f"host {host} non_responsive: {reason}",
             "host_id": done, "prefix": "vm:"})
        vms = sorted(r["name"] for r in cur.fetchall())
    return ContactChange(host=host, changed=True, state=HostState.NON_RESPONSIVE, vms=vms)


def regain_contact(db: Database, host: str) -> ContactChange:
    """``host`` (if ``non_responsive``) is ``up`` again; its VMs keep their state until the
    caller records what libvirt says of them (``observe_vm_state``)."""
    with db.transaction() as cur:
        done = _transition(cur, host, HostTransition.REGAIN_CONTACT, None)
    if isinstance(done, ContactChange):
        return done
    return ContactChange(host=host, changed=True, state=HostState.UP)


def _transition(cur: Any, host: str, transition: HostTransition, reason: str | None
                ) -> ContactChange | int:
    """Apply ``transition`` to ``host`` under its row lock, with ``reason``: the host's id, or
    the unchanged outcome when there is no such host or the transition may not start from its
    state (the monitor's transitions only ever start from their one source state)."""
    cur.execute("SELECT id, state FROM hosts WHERE name = %s FOR UPDATE", (host,))
    row = cur.fetchone()
    if row is None:
        return ContactChange(host=host, changed=False)
    before = HostState(row["state"])
    rule = TRANSITIONS[transition]
    if before not in rule.sources:
        return ContactChange(host=host, changed=False, state=before)
    cur.execute("UPDATE hosts SET state = %s, state_reason = %s, updated_at = now()"
                " WHERE id = %s", (rule.target.value, reason, row["id"]))
    return int(row["id"])


def observe_vm_state(db: Database, host: str, vm: str, state: VmState) -> bool:
    """Record ``state`` (what libvirt on ``host`` says now) for VM ``vm`` if the inventory has
    it on ``host``, no task holds it and its recorded state differs; True if a row changed."""
    return _observe(db, "vms", "UPDATE vms SET state = %(state)s, state_reason = NULL,"
                    " updated_at = now() WHERE name = %(name)s AND state <> %(state)s",
                    {"state": state.value, "name": vm, "host": host, "prefix": "vm:"})


def observe_pool_state(db: Database, host: str, pool: str, active: bool) -> bool:
    """Record a pool on ``host`` as ``active`` or ``inactive`` (libvirt started or stopped it)
    if the inventory has it there, recorded (not still being created), no task holds it and its
    state differs; True if a row changed."""
    return _observe(db, "storage_pools", "UPDATE storage_pools SET state = %(state)s,"
                    " updated_at = now() WHERE name = %(name)s"
                    " AND state NOT IN (%(state)s, 'creating')",
                    {"state": "active" if active else "inactive", "name": pool, "host": host,
                     "prefix": "pool:"})


def _observe(db: Database, table: str, update: str, params: dict[str, str]) -> bool:
    """Run ``update`` (of ``table``) restricted to the row on ``params["host"]`` that no task
    holds; True if a row changed."""
    with db.transaction() as cur:
        cur.execute(update + " AND host_id = (SELECT id FROM hosts WHERE name = %(host)s)"
                    " AND " + _NOT_HELD.format(table=table), params)
        return bool(cur.rowcount)
