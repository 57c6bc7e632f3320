"""The safety net: a periodic comparison of the inventory with libvirt and with the queue.

Everything else in taskomatic is event driven; this task, run by a Temporal Schedule, is the one
periodic check. It drops places in line and reservations left by tasks that ended without
releasing them (terminated from outside, say), believes libvirt about power states of VMs no task
is working on, and reports domains and VMs it cannot account for.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import HostReconcileActivities, QueueReconcileActivities
    from taskomatic.reconcile import (
        Findings,
        HostCheck,
        ReconcileInput,
        ReconcileReport,
        ReconcileRequest,
    )

from workflows.runbook import DATABASE, HYPERVISOR, Runbook

Queue = QueueReconcileActivities
Hosts = HostReconcileActivities
ON_ORDERING_QUEUE = replace(DATABASE, ordering_queue=True)
RECONCILE_SCHEDULE_ID = "taskomatic-reconcile"


@workflow.defn(name="Reconcile")
class Reconcile(Runbook):
    KIND = "Reconcile"

    @workflow.run
    async def run(self, req: ReconcileRequest) -> ReconcileReport:
        return await self.perform(req, lambda: self._reconcile(req))

    async def _reconcile(self, req: ReconcileRequest) -> ReconcileReport:
        inp = ReconcileInput(grace_seconds=req.grace_seconds)
        self.phase("run")
        stale: Findings = await self.step("drop claims of ended tasks", Queue.drop_stale_claims,
                                          inp, options=ON_ORDERING_QUEUE)
        leaked: Findings = await self.step("release reservations of ended tasks",
                                           Queue.release_stale_reservations, inp,
                                           options=ON_ORDERING_QUEUE)
        hosts: list[HostCheck] = await self.step("list hosts", Hosts.hosts_to_check, inp,
                                                 options=DATABASE)
        per_host: list[Findings] = list(await asyncio.gather(*(
            self.step(f"compare {h.host} with libvirt", Hosts.compare_host, h,
                      options=HYPERVISOR) for h in hosts)))
        found = [f for part in (stale, leaked, *per_host) for f in part.findings]
        if found:
            self.log("reconciliation found problems", count=len(found),
                     unrepaired=[f.detail for f in found if not f.repaired])
        return ReconcileReport(task_id=workflow.info().workflow_id, findings=found,
                               hosts_checked=len(hosts))
