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
import faulthandler
import os
import py_compile
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.disks import DiskActivities
from activities.events import AuditInterceptor, TaskEnds
from activities.heartbeats import StepHeartbeats
from activities.hosts import HostActivities
from activities.migration import HEARTBEAT_THROTTLE, MigrationActivities
from activities.ordering import OrderingActivities
from activities.reconcile import HostReconcileActivities, QueueReconcileActivities
from activities.storage import StorageActivities, StorageInventoryActivities
from activities.vms import DomainActivities, InventoryActivities
from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.health import HealthServer
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.eventloop import event_loop_lag
from taskomatic.inventory.db import Database, get_database
from taskomatic.inventory.events import sweep_events
from taskomatic.logs import configure_logging, get_logger
from taskomatic.metrics import PLACEMENT_SECONDS, STEP_SECONDS, TASKS_ENDED, TASKS_STARTED
from taskomatic.monitor import EventRecorder, HostMonitor, connection_limits
from taskomatic.settings import Settings, get_settings
from taskomatic.temporal import connect_temporal, ensure_search_attributes, sdk_runtime
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
        moves.check_storage_copy,
    ]


# The runbook, the place in line and the helpers tasks make (VM steps, disk steps, the mover)
# hold no state of their own and define no workflow, so they are shared by all workflow runs
# instead of being re-imported into every sandbox (measured: ~2 ms of CPU per task saved; the
# mover, out of workflows.migration, spares every VM task re-importing MigrateVm's module). A
# module that defines a workflow (workflows.migration: MigrateVm) is never passed through: its
# workflow would run without the sandbox's checks.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "workflows.runbook", "workflows.ordering", "workflows.vm_steps", "workflows.disks",
        "workflows.cancels", "workflows.move_steps", "workflows.storage_copy",
        "workflows.events"))


def write_workflow_bytecode(workflows: Sequence[type]) -> list[str]:
    """Write the bytecode (``__pycache__``) of the modules that define ``workflows``; returns
    the source files written for. The sandbox imports a workflow's module afresh into every
    workflow run: without bytecode (``PYTHONDONTWRITEBYTECODE``, which the image and this
    project's machines set) every run compiles it from source again (measured: ~5 ms of CPU
    per VM task for the VM tasks' module). ``py_compile`` writes it whatever that setting says;
    a module it cannot write for (read-only tree) keeps compiling, as before."""
    written = []
    for name in sorted({wf.__module__ for wf in workflows}):
        path = getattr(sys.modules.get(name), "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        try:
            py_compile.compile(path, doraise=True)
            written.append(path)
        except (OSError, py_compile.PyCompileError) as err:
            get_logger().info("workflow bytecode not written", module=name, error=str(err))
    return written


def drain_time(settings: Settings) -> timedelta:
    """How long a stopping worker lets its running activities finish."""
    return timedelta(seconds=settings.worker_drain_seconds)


def build_worker(client: Client, settings: Settings, hypervisors: Hypervisors,
                 executor: ThreadPoolExecutor) -> Worker:
    write_workflow_bytecode(TASK_WORKFLOWS)
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
        # Metrics, and the audit log: each step, undo and wait of every task (task_events).
        interceptors=[TaskMetrics(), AuditInterceptor(_database(settings)), StepHeaders(),
                      StepHeartbeats()],
    )


class TaskMetrics(Interceptor):
    """Prometheus figures of the work itself (``taskomatic.metrics``): tasks started and ended
    by kind and outcome (counted where they really start and end, never when a worker replays
    a history), and the duration of every activity attempt by activity and outcome (the
    placement transactions, ``reserve_capacity`` and ``reserve_destination``, also as the
    placement latency)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TimedActivity(next)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput
                                   ) -> type[WorkflowInboundInterceptor]:
        return _CountedTask


_PLACING = frozenset({"reserve_capacity", "reserve_destination"})


class _TimedActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        started = time.monotonic()
        outcome = "error"
        try:
            result = await super().execute_activity(input)
            outcome = "complete"
            return result
        except (asyncio.CancelledError, CancelledError):
            outcome = "cancelled"
            raise
        finally:
            took = time.monotonic() - started
            STEP_SECONDS.labels(activity=name, outcome=outcome).observe(took)
            if name in _PLACING:
                PLACEMENT_SECONDS.observe(took)


class _CountedTask(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        kind = info.workflow_type
        if not workflow.unsafe.is_replaying() and info.continued_run_id is None:
            TASKS_STARTED.labels(kind=kind).inc()
        outcome: str | None = "error"
        try:
            result = await super().execute_workflow(input)
            outcome = "complete"
            return result
        except workflow.ContinueAsNewError:
            outcome = None  # the same task goes on in a new run
            raise
        except (asyncio.CancelledError, CancelledError):
            outcome = "cancelled"
            raise
        finally:
            if outcome is not None and not workflow.unsafe.is_replaying():
                TASKS_ENDED.labels(kind=kind, outcome=outcome).inc()


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
                      AuditInterceptor(_database(settings)), StepHeartbeats()],
    )


async def run_worker(settings: Settings | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain: no new work, running activities may finish for up
    to ``settings.worker_drain_seconds`` (both workers at once), then stop. Beside the Temporal
    workers: the host monitor, the libvirt event recorder and the metrics/health endpoint."""
    settings = settings or get_settings()
    client = await connect_temporal(settings, sdk_runtime(settings))
    await ensure_search_attributes(client, settings.temporal_namespace)
    await ensure_reconcile_schedule(client, settings)
    hypervisors = Hypervisors(connection_limits(settings))
    monitor_db = get_database(settings.database_url, max_connections=4)
    recorder = EventRecorder(monitor_db, hypervisors)
    recorder.start()
    monitor = HostMonitor(monitor_db, hypervisors,
                          interval_seconds=settings.host_check_interval_seconds,
                          unresponsive_seconds=settings.host_unresponsive_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=settings.activity_threads,
                            thread_name_prefix="activity") as executor:
        worker = build_worker(client, settings, hypervisors, executor)
        watcher = build_ordering_worker(client, settings)
        health = (HealthServer(settings.metrics_address, liveness_checks(),
                               readiness_checks(client, [worker, watcher], monitor_db))
                  if settings.metrics_address else None)
        if health is not None:
            try:
                await health.start()
            except OSError as err:  # e.g. a second worker on this machine with the same port
                log.error("no metrics or health endpoint: cannot listen",
                          address=settings.metrics_address, error=str(err))
                health = None
        log.info("worker started", task_queue=settings.task_queue,
                 temporal=settings.temporal_address, namespace=settings.temporal_namespace,
                 drain_seconds=settings.worker_drain_seconds)
        monitoring = asyncio.create_task(monitor.run(stop))
        async with worker, watcher, audit_log(client, settings):
            await stop.wait()
            log.info("worker stopping: no new work; running activities may finish",
                     drain_seconds=settings.worker_drain_seconds)
            await asyncio.gather(worker.shutdown(), watcher.shutdown())
        await monitoring
        if health is not None:
            await health.stop()
        log.info("worker stopped")
    recorder.stop()
    hypervisors.close()


# The libvirt event loop counts as stuck when its 1 s timer has not fired for this long.
EVENT_LOOP_STUCK_SECONDS = 5.0


def liveness_checks() -> dict[str, Any]:
    """``/healthz``: the process answers (this endpoint runs on the worker's asyncio loop) and
    libvirt's event loop, which keepalives and events need, still turns."""
    async def libvirt_event_loop() -> str | None:
        lag = event_loop_lag()
        if lag is None:
            return "no libvirt event loop"
        return None if lag < EVENT_LOOP_STUCK_SECONDS else f"stuck for {lag:.0f} s"
    return {"libvirt_event_loop": libvirt_event_loop}


def readiness_checks(client: Client, workers: Sequence[Worker], db: Database
                     ) -> dict[str, Any]:
    """``/readyz``: Temporal answers, every poller (task and ordering queues) runs, and the
    inventory database answers."""
    async def temporal() -> str | None:
        ok = await client.service_client.check_health()
        return None if ok else "Temporal's health check says not serving"

    async def pollers() -> str | None:
        stopped = [w.task_queue for w in workers if not w.is_running]
        return f"not polling {', '.join(stopped)}" if stopped else None

    async def database() -> str | None:
        def ping() -> None:
            with db.transaction() as cur:
                cur.execute("SELECT 1")
        await asyncio.to_thread(ping)
        return None
    return {"temporal": temporal, "pollers": pollers, "database": database}


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
    faulthandler.enable()  # a crash in C (libvirt, the SDK) leaves its stack in the log
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
