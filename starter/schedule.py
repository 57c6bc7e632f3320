"""The reconciliation Schedule: Temporal starts a ``Reconcile`` task every few minutes.

Created (or brought up to date) by every worker at start-up and by ``taskomatic reconcile
schedule``; visible under Schedules in the Temporal Web UI.
"""

from __future__ import annotations

from datetime import timedelta

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

from taskomatic.reconcile import ReconcileRequest
from taskomatic.settings import Settings
from taskomatic.temporal import TASK_KIND, TASK_STATE
from workflows.reconcile import RECONCILE_SCHEDULE_ID, Reconcile


def reconcile_schedule(settings: Settings, every_seconds: float | None = None) -> Schedule:
    every = timedelta(seconds=every_seconds or settings.reconcile_interval_seconds)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            Reconcile.run, ReconcileRequest(requested_by="schedule"), id="reconcile",
            task_queue=settings.task_queue,
            typed_search_attributes=TypedSearchAttributes([
                SearchAttributePair(TASK_KIND, "Reconcile"),
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
