"""The safety net: a periodic comparison of the inventory with libvirt and with the queue.

Everything else in taskomatic is event driven; this task, run by a Temporal Schedule, is the one
periodic check. It drops places in line and reservations left by tasks that ended without
releasing them (terminated from outside, say), believes libvirt about power states of VMs no task
is working on, and reports domains and VMs it cannot account for.

The Schedule is created (or brought up to date) by every worker at start-up and by ``taskomatic
reconcile schedule``; it shows under Schedules in the Temporal Web UI.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import HostReconcileActivities, QueueReconcileActivities
    from taskomatic.models import (
        Findings,
        HostCheck,
        ReconcileInput,
        ReconcileReport,
        ReconcileRequest,
    )
    from taskomatic.settings import Settings
    from taskomatic.temporal import TASK_KIND, TASK_STATE

from workflows.runbook import DATABASE, HYPERVISOR, Runbook, workflow_type

Queue = QueueReconcileActivities
Hosts = HostReconcileActivities
ON_ORDERING_QUEUE = replace(DATABASE, ordering_queue=True)
RECONCILE_SCHEDULE_ID = "taskomatic-reconcile"


@workflow.defn(name="Reconcile")
class Reconcile(Runbook):
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
        per_host: list[Findings] = await self.together(
            self.step(f"compare {h.host} with libvirt", Hosts.compare_host, h,
                      options=HYPERVISOR) for h in hosts)
        found = [f for part in (stale, leaked, *per_host) for f in part.findings]
        if found:
            self.log("reconciliation found problems", count=len(found),
                     unrepaired=[f.detail for f in found if not f.repaired])
        return ReconcileReport(task_id=workflow.info().workflow_id, findings=found,
                               hosts_checked=len(hosts))


def reconcile_schedule(settings: Settings, every_seconds: float | None = None) -> Schedule:
    every = timedelta(seconds=every_seconds or settings.reconcile_interval_seconds)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            Reconcile.run, ReconcileRequest(requested_by="schedule"), id="reconcile",
            task_queue=settings.task_queue,
            typed_search_attributes=TypedSearchAttributes([
                SearchAttributePair(TASK_KIND, workflow_type(Reconcile.run)),
                SearchAttributePair(TASK_STATE, "new")])),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # One at a time: a slow run is never stacked with the next.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings,
                                    every_seconds: float | None = None) -> bool:
    """Create the schedule, or update it to the current settings; True if it was created."""
    schedule = reconcile_schedule(settings, every_seconds)
    try:
        await client.create_schedule(RECONCILE_SCHEDULE_ID, schedule)
        return True
    except ScheduleAlreadyRunningError:
        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)
        await client.get_schedule_handle(RECONCILE_SCHEDULE_ID).update(update)
        return False
