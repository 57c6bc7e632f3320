"""Reconciliation activities: find what drifted between the inventory, libvirt and the queue.

Conservative by design: a VM or claim that a live task is working on is never touched, a state
drift is repaired by believing libvirt, and whatever cannot be repaired safely (a domain nobody
knows, a VM whose domain vanished) is reported and logged loudly for an operator.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.ordering import wake_tasks
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors, domain_states
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.inventory.reconcile import claim_ages, reservation_ages
from taskomatic.logs import get_logger
from taskomatic.models import Finding, Findings, HostCheck, ReconcileInput, VmState

log = get_logger(component="reconcile")


class QueueReconcileActivities:
    """The queue side (needs Temporal): claims and reservations whose task has ended."""

    def __init__(self, db: Database, client: Client) -> None:
        self.db = db
        self.client = client

    @activity.defn
    async def drop_stale_claims(self, inp: ReconcileInput) -> Findings:
        held = await asyncio.to_thread(claim_ages, self.db)
        ended = await self._ended(held, inp.grace_seconds)
        dropped, woken = await asyncio.to_thread(ordering.drop_closed, self.db, ended)
        await wake_tasks(self.client, woken)
        found = [Finding(kind="stale_claim", subject=t, repaired=True,
                         detail=f"{t} ended without releasing its resources; dropped")
                 for t in dropped]
        for f in found:
            log.warning("repaired: " + f.detail, task_id=f.subject)
        return Findings(findings=found)

    @activity.defn
    async def release_stale_reservations(self, inp: ReconcileInput) -> Findings:
        held = await asyncio.to_thread(reservation_ages, self.db)
        found = []
        for task_id in await self._ended(held, inp.grace_seconds):
            res = await asyncio.to_thread(inventory.release_capacity, self.db, task_id)
            if res is not None:
                found.append(Finding(kind="stale_reservation", subject=task_id, repaired=True,
                                     detail=f"{task_id} ended holding {res.detail}; released"))
                log.warning("repaired: " + found[-1].detail, task_id=task_id)
        return Findings(findings=found)

    async def _ended(self, ages: dict[str, datetime], grace_seconds: float) -> list[str]:
        """Tasks among ``ages`` (task id → when it took the row) that have ended or never
        existed, leaving alone rows younger than the grace period."""
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)

        async def ended(task_id: str) -> bool:
            try:
                desc = await self.client.get_workflow_handle(task_id).describe()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                return ages[task_id] < cutoff
            return desc.status not in (None, WorkflowExecutionStatus.RUNNING,
                                       WorkflowExecutionStatus.CONTINUED_AS_NEW)
        flags = await asyncio.gather(*(ended(t) for t in ages))
        return [t for t, gone in zip(ages, flags, strict=True) if gone]


class HostReconcileActivities:
    """The hypervisor side: one host's domains against the inventory."""

    def __init__(self, db: Database, hypervisors: Hypervisors) -> None:
        self.db = db
        self.hv = hypervisors

    @activity.defn
    def compare_host(self, inp: HostCheck) -> Findings:
        try:
            domains = domain_states(self.hv, inp.host, inp.uri)
        except Exception as err:  # reported, not raised: one bad host must not hide the rest
            return Findings(findings=[Finding(kind="host_unreachable", subject=inp.host,
                                              repaired=False, detail=str(err))])
        busy = {c.resource.removeprefix("vm:") for c in ordering.queue(self.db)
                if c.resource.startswith("vm:")}
        known = {vm.name: vm for vm in inventory.list_vms(self.db, inp.host)}
        found: list[Finding] = []
        for name, vm in known.items():
            if name in busy:
                continue
            actual = domains.get(name)
            if actual is None:
                inventory.set_vm_state(self.db, name, VmState.UNKNOWN)
                found.append(Finding(kind="missing_domain", subject=name, repaired=False,
                                     detail=f"{name} is in the inventory on {inp.host}, but no "
                                            "such domain is defined there; marked unknown"))
            elif actual != vm.state:
                inventory.set_vm_state(self.db, name, actual)
                found.append(Finding(kind="state_drift", subject=name, repaired=True,
                                     detail=f"{name} on {inp.host}: inventory said {vm.state}, "
                                            f"libvirt says {actual}; inventory updated"))
        placed = {vm.name for vm in inventory.list_vms(self.db)}
        for name in sorted(set(domains) - placed - busy):
            found.append(Finding(kind="unmanaged_domain", subject=name, repaired=False,
                                 detail=f"domain {name} on {inp.host} is not in the inventory"))
        for f in found:
            (log.warning if f.repaired else log.error)(
                ("repaired: " if f.repaired else "needs an operator: ") + f.detail,
                host=inp.host, vm=f.subject)
        return Findings(findings=found)

    @activity.defn
    def hosts_to_check(self, inp: ReconcileInput) -> list[HostCheck]:
        return [HostCheck(host=h.name, uri=h.uri) for h in inventory.list_hosts(self.db)
                if h.state != "down"]

