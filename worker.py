"""The taskomatic worker: runs every task workflow and activity from one task queue.

``python worker.py`` and ``taskomatic worker`` both run it. Parallelism is bounded by settings:
workflow tasks and activities each have a ceiling, and synchronous activities (libvirt, psycopg2)
run in a fixed-size thread pool.

Stopping (SIGTERM or SIGINT, e.g. a rolling deploy): the worker stops taking work at once and
drains — the activities it runs (a live migration) may finish for up to
``TASKOMATIC_WORKER_DRAIN_SECONDS`` (``Worker(graceful_shutdown_timeout=…)``); whatever still runs
then is cancelled, and Temporal hands it to another worker. Waits of the ordering queue (a task
waiting for another to end) hold nothing and may take days, so they end at once with a
retryable ``WorkerStopping`` and are taken over by another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.disks import DiskActivities
from activities.events import AuditInterceptor, TaskEnds
from activities.hosts import HostActivities
from activities.migration import HEARTBEAT_THROTTLE, MigrationActivities
from activities.ordering import OrderingActivities
from activities.reconcile import HostReconcileActivities, QueueReconcileActivities
from activities.storage import StorageActivities, StorageInventoryActivities
from activities.vms import DomainActivities, InventoryActivities
from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import get_database
from taskomatic.inventory.events import sweep_events
from taskomatic.logs import configure_logging, get_logger
from taskomatic.settings import Settings, get_settings
from taskomatic.temporal import connect_temporal, ensure_search_attributes
from workflows.events import StepHeaders
from workflows.kinds import TASK_WORKFLOWS  # every task kind this worker runs, one per row
from workflows.ordering import ordering_queue
from workflows.reconcile import ensure_reconcile_schedule

log = get_logger(component="worker")


def _database(settings: Settings) -> Any:
    # One connection per activity thread, so no inventory step waits for another's connection.
    return get_database(settings.database_url, max_connections=settings.activity_threads)


def activity_list(settings: Settings, hypervisors: Hypervisors, client: Client
                  ) -> Sequence[Any]:
    db = _database(settings)
    inventory = InventoryActivities(db)
    domains = DomainActivities(hypervisors, db)
    reconcile = HostReconcileActivities(db, hypervisors)
    storage = [*StorageActivities(hypervisors, db).all(), *DiskActivities(db).all(),
               *StorageInventoryActivities(db, settings.pool_roots).all()]
    hosts = HostActivities(db)
    moves = MigrationActivities(hypervisors, db, settings, client)
    return [
        *storage, reconcile.hosts_to_check, reconcile.compare_host,
        inventory.reserve_capacity, inventory.release_capacity, inventory.lookup_vm,
        inventory.record_vm, inventory.set_vm_state, inventory.remove_vm,
        domains.define_domain, domains.undefine_domain, domains.start_domain,
        domains.shutdown_domain, domains.wait_domain_shutoff, domains.destroy_domain,
        hosts.reserve_destination, hosts.host_ref, hosts.begin_maintenance, hosts.set_host_state,
        hosts.vms_with_origin, hosts.plan_moves,
        moves.migrate_domain, moves.confirm_move, moves.locate_domain, moves.list_host_domains,
    ]


# The runbook, the place in line and the helpers tasks make (VM steps, disk steps) hold no state
# of their own and define no workflow, so they are shared by all workflow runs instead of being
# re-imported into every sandbox (measured: ~2 ms of CPU per task saved). A module that defines a
# workflow (workflows.migration: MigrateVm) is never passed through: its workflow would run
# without the sandbox's checks.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "workflows.runbook", "workflows.ordering", "workflows.vm_steps", "workflows.disks",
        "workflows.cancels", "workflows.events"))


def drain_time(settings: Settings) -> timedelta:
    """How long a stopping worker lets its running activities finish."""
    return timedelta(seconds=settings.worker_drain_seconds)


def build_worker(client: Client, settings: Settings, hypervisors: Hypervisors,
                 executor: ThreadPoolExecutor) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=TASK_WORKFLOWS,
        workflow_runner=WORKFLOW_RUNNER,
        activities=activity_list(settings, hypervisors, client),
        activity_executor=executor,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,  # a cancel is heard within ~1 s
        graceful_shutdown_timeout=drain_time(settings),
        # The audit log: each step, undo and wait of every task (task_events).
        interceptors=[AuditInterceptor(_database(settings)), StepHeaders()],
    )


class WaitsEndAtShutdown(Interceptor):
    """Ends the activities named in ``waits`` as soon as their worker starts to stop, with a
    retryable ``WorkerStopping`` (the workflow's retry policy hands the wait to another worker),
    instead of holding the worker's drain: a wait does no work that could be cut off."""

    def __init__(self, waits: set[str]) -> None:
        self.waits = waits

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _EndAtShutdown(next, self.waits)


class _EndAtShutdown(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, waits: set[str]) -> None:
        super().__init__(next)
        self.waits = waits

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().activity_type not in self.waits:
            return await super().execute_activity(input)
        wait = asyncio.ensure_future(super().execute_activity(input))
        stopping = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        try:
            await asyncio.wait([wait, stopping], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the activity itself was cancelled: so is the wait
            wait.cancel()
            raise
        finally:
            stopping.cancel()
        if wait.done():
            return wait.result()
        wait.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await wait
        raise ApplicationError("the worker is stopping; another worker takes this wait over",
                               type="WorkerStopping")


def build_ordering_worker(client: Client, settings: Settings) -> Worker:
    """The worker of the ordering queue: claims, releases and tasks waiting for other tasks to
    end. Each is one cheap coroutine, so its ceiling is high and apart from the working
    activities' (a line of waiting tasks never starves the tasks that work)."""
    ordering = OrderingActivities(_database(settings), client, settings)
    reconcile = QueueReconcileActivities(_database(settings), client)
    return Worker(
        client,
        task_queue=ordering_queue(settings.task_queue),
        activities=[ordering.claim_resources, ordering.release_resources,
                    ordering.await_task_end, reconcile.drop_stale_claims,
                    reconcile.release_stale_reservations],
        max_concurrent_activities=settings.max_waiting_tasks,
        graceful_shutdown_timeout=drain_time(settings),
        interceptors=[WaitsEndAtShutdown({OrderingActivities.await_task_end.__name__}),
                      AuditInterceptor(_database(settings))],
    )


async def run_worker(settings: Settings | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain: no new work, running activities may finish for up
    to ``settings.worker_drain_seconds`` (both workers at once), then stop."""
    settings = settings or get_settings()
    client = await connect_temporal(settings)
    await ensure_search_attributes(client, settings.temporal_namespace)
    await ensure_reconcile_schedule(client, settings)
    hypervisors = Hypervisors()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=settings.activity_threads,
                            thread_name_prefix="activity") as executor:
        worker = build_worker(client, settings, hypervisors, executor)
        watcher = build_ordering_worker(client, settings)
        log.info("worker started", task_queue=settings.task_queue,
                 temporal=settings.temporal_address, namespace=settings.temporal_namespace,
                 drain_seconds=settings.worker_drain_seconds)
        async with worker, watcher, audit_log(client, settings):
            await stop.wait()
            log.info("worker stopping: no new work; running activities may finish",
                     drain_seconds=settings.worker_drain_seconds)
            await asyncio.gather(worker.shutdown(), watcher.shutdown())
        log.info("worker stopped")
    hypervisors.close()


@contextlib.asynccontextmanager
async def audit_log(client: Client, settings: Settings) -> AsyncIterator[None]:
    """While open, the worker's audit-log chores run: recording the end of every task of its
    queue (``activities.events.TaskEnds``) and sweeping events past their retention."""
    chores = [asyncio.create_task(TaskEnds(client, _database(settings),
                                           settings.task_queue).run()),
              asyncio.create_task(sweep_audit_log(settings))]
    try:
        yield
    finally:
        for chore in chores:
            chore.cancel()
        await asyncio.gather(*chores, return_exceptions=True)


async def sweep_audit_log(settings: Settings, every_seconds: float = 3600.0) -> None:
    """Every ``every_seconds``: delete audit-log events older than
    ``settings.task_events_retention_days`` (several workers sweeping at once is harmless)."""
    while True:
        try:
            swept = await asyncio.to_thread(sweep_events, _database(settings),
                                            settings.task_events_retention_days)
            if swept:
                log.info("audit log swept", events=swept,
                         retention_days=settings.task_events_retention_days)
        except ApplicationError as err:
            log.warning("audit log sweep failed", error=error_info(err).message)
        await asyncio.sleep(every_seconds)


def main() -> None:
    """``python -m worker`` (and ``taskomatic worker``, which runs it). Exit status 3, with the
    reason on stderr, when the encryption keys or TLS files are unusable or the inventory
    database cannot be reached, as for every other taskomatic command."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    code = 0
    try:
        asyncio.run(run_worker(settings))
    except CodecError as err:
        code = _refused(str(err))
    except ApplicationError as err:
        info = error_info(err)
        if info.type is not ErrorType.DATABASE_UNAVAILABLE:
            raise
        code = _refused(info.message)
    # Leave without interpreter teardown: the SDK's runtime threads can trip over it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _refused(reason: str) -> int:
    print(f"error: {reason}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    main()
