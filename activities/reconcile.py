"""Reconciliation activities: find what drifted between the inventory, libvirt and the queue.

Conservative by design: a VM or claim that a live task is working on is never touched, a state
drift is repaired by believing libvirt, a location drift too (a VM found running on another host
than its row says, with the same UUID: a move whose task ended before recording it), and whatever
cannot be repaired safely (a domain nobody knows, a VM whose domain vanished or that several hosts
define) is reported and logged loudly for an operator.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.ordering import wake_tasks
from activities.vms import other_hosts
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.presence import Sighting, host_sightings, where
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.inventory.reconcile import claim_ages, reservation_ages
from taskomatic.inventory.vms import relocate_vm
from taskomatic.logs import get_logger
from taskomatic.metrics import RECONCILE_FINDINGS
from taskomatic.models import (
    Finding,
    Findings,
    HostCheck,
    HostRef,
    HostState,
    ReconcileInput,
    VmRecord,
    VmState,
)

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
            count(f)
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
                count(found[-1])
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


def count(finding: Finding) -> None:
    """One finding in the ``taskomatic_reconcile_findings_total`` metric."""
    RECONCILE_FINDINGS.labels(kind=finding.kind, repaired=str(finding.repaired).lower()).inc()


_OFF = (VmState.SHUTOFF, VmState.CRASHED)


class _OtherHosts:
    """What the other hosts have, listed once (on first use) per comparison; hosts that cannot
    be asked are noted, not fatal."""

    def __init__(self, hv: Hypervisors, hosts: list[HostRef]) -> None:
        self._hv, self._hosts = hv, hosts
        self._seen: list[dict[str, Sighting]] | None = None
        self.unasked: list[str] = []

    def find(self, vm: VmRecord) -> list[Sighting]:
        """Where the other hosts define VM ``vm`` (same name and UUID)."""
        if self._seen is None:
            self._seen = []
            for host in self._hosts:
                try:
                    self._seen.append(host_sightings(self._hv, host))
                except ApplicationError:
                    self.unasked.append(host.name)
        return [s[vm.name] for s in self._seen
                if vm.name in s and s[vm.name].uuid == vm.uuid]


class HostReconcileActivities:
    """The hypervisor side: one host's domains against the inventory (and, for a VM not there
    or not running there, the other hosts' domains)."""

    def __init__(self, db: Database, hypervisors: Hypervisors) -> None:
        self.db = db
        self.hv = hypervisors

    @activity.defn
    def compare_host(self, inp: HostCheck) -> Findings:
        try:
            domains = host_sightings(self.hv, HostRef(name=inp.host, uri=inp.uri))
        except Exception as err:  # reported, not raised: one bad host must not hide the rest
            return Findings(findings=[Finding(kind="host_unreachable", subject=inp.host,
                                              repaired=False, detail=str(err))])
        busy = {c.resource.removeprefix("vm:") for c in ordering.queue(self.db)
                if c.resource.startswith("vm:")}
        known = {vm.name: vm for vm in inventory.list_vms(self.db, inp.host)}
        others = _OtherHosts(self.hv, other_hosts(self.db, inp.host))
        found: list[Finding] = []
        for name, vm in known.items():
            if name in busy:
                continue
            actual = domains.get(name)
            if actual is None or actual.state in _OFF:
                moved = self._relocate(vm, actual, others.find(vm))
                if moved is not None:
                    found += moved
                    continue
            if actual is None:
                inventory.set_vm_state(self.db, name, VmState.UNKNOWN)
                unasked = (f" (could not ask {', '.join(others.unasked)})" if others.unasked
                           else "")
                found.append(Finding(kind="missing_domain", subject=name, repaired=False,
                                     detail=f"{name} is in the inventory on {inp.host}, but no "
                                            f"such domain is defined there or on another host"
                                            f"{unasked}; marked unknown"))
            elif actual.state != vm.state:
                inventory.set_vm_state(self.db, name, actual.state)
                found.append(Finding(kind="state_drift", subject=name, repaired=True,
                                     detail=f"{name} on {inp.host}: inventory said {vm.state}, "
                                            f"libvirt says {actual.state}; inventory updated"))
        placed = {vm.name: vm for vm in inventory.list_vms(self.db)}
        found += self._adopt_from_down_hosts(inp.host, domains, placed, busy)
        for name in sorted(set(domains) - set(placed) - busy):
            found.append(Finding(kind="unmanaged_domain", subject=name, repaired=False,
                                 detail=f"domain {name} on {inp.host} is not in the inventory"))
        for f in found:
            count(f)
            if f.kind == "state_drift":  # the worker's libvirt events should have recorded it
                log.error("repaired what the libvirt events missed: " + f.detail,
                          host=inp.host, vm=f.subject)
                continue
            (log.warning if f.repaired else log.error)(
                ("repaired: " if f.repaired else "needs an operator: ") + f.detail,
                host=inp.host, vm=f.subject)
        return Findings(findings=found)

    def _adopt_from_down_hosts(self, host: str, domains: dict[str, Sighting],
                               placed: dict[str, VmRecord], busy: set[str]) -> list[Finding]:
        """Domains running on ``host`` whose VM is recorded on a host marked down (which no
        comparison visits): recorded on ``host``."""
        down = {h.name for h in inventory.list_hosts(self.db) if h.state == HostState.DOWN}
        found = []
        for name, seen in sorted(domains.items()):
            vm = placed.get(name)
            if (vm is None or name in busy or vm.host not in down or seen.uuid != vm.uuid
                    or seen.state in _OFF):
                continue
            if relocate_vm(self.db, name, vm.uuid, vm.host, host, seen.state):
                found.append(Finding(
                    kind="location_drift", subject=name, repaired=True,
                    detail=f"{name} was recorded on {vm.host} (marked down) but is "
                           f"{seen.state} on {host}; recorded there (with its capacity)"))
        return found

    def _relocate(self, vm: VmRecord, here: Sighting | None, elsewhere: list[Sighting]
                  ) -> list[Finding] | None:
        """VM ``vm`` is not on its host (``here`` None) or not running there: record it where
        it runs, or (absent here) where it alone is defined. None if no other host has it (the
        caller goes on as before); an empty list if a task took the VM meanwhile; a finding
        not repaired if the hosts that have it leave its place in doubt."""
        active = [s for s in elsewhere if s.state not in _OFF]
        if here is not None:
            if len(active) != 1:
                return None
            target = active[0]
        elif not elsewhere:
            return None
        elif len(active) == 1 or len(elsewhere) == 1:
            target = active[0] if active else elsewhere[0]
        else:
            return [Finding(kind="location_drift", subject=vm.name, repaired=False,
                            detail=f"{vm.name} is recorded on {vm.host}, which does not have "
                                   f"it; it is {where(elsewhere)}: left as recorded")]
        if not relocate_vm(self.db, vm.name, vm.uuid, vm.host, target.host, target.state):
            return []
        stale = f"; its {here.state} definition on {vm.host} is stale" if here else ""
        return [Finding(kind="location_drift", subject=vm.name, repaired=True,
                        detail=f"{vm.name} was recorded on {vm.host} but is {target.state} on "
                               f"{target.host}; recorded there (with its capacity){stale}")]

    @activity.defn
    def hosts_to_check(self, inp: ReconcileInput) -> list[HostCheck]:
        return [HostCheck(host=h.name, uri=h.uri) for h in inventory.list_hosts(self.db)
                if h.state != HostState.DOWN]

