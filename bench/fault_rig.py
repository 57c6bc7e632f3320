"""The rig of the fault runs (``bench.faults``): a task queue of its own with a worker a run
may stop, kill and replace (in-process, ``bench.fault_worker``, or a worker process,
``bench.fault_process``), the hosts of the runs (``bench.fault_hosts``, ``bench.fault_lab``),
and one run from set-up through the fault to the checks (``bench.fault_checks``).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, nullcontext
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from bench.fault_checks import Domain, HostLike, Violation, check_run, libvirt_view
from bench.fault_hosts import RunHosts
from bench.fault_plans import Plan, RunReport, Shape
from bench.fault_worker import POLL_SECONDS, Phases, ReplaceableWorker, RunWorker
from starter.client import TaskError, TaskHandle, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    DomainSpec,
    HostTaskProgress,
    ReconcileReport,
    ReconcileRequest,
    RecordVmInput,
    VmState,
)
from taskomatic.settings import Settings
from worker import build_ordering_worker

# Faults after which the design relies on a Reconcile: a task terminated from outside cannot
# clean up, and one that lost a host mid-move cannot learn where the VM is until it answers.
RECONCILED = ("terminate-clear", "kill-destination")

# Keeps a run's ``Phases`` up to date from outside the worker (a worker process's moves):
# called with the run's hosts (the source first) and VM names, and the rig's ``Phases``.
Follow = Callable[[Sequence[HostLike], Collection[str], Phases],
                  AbstractAsyncContextManager[object]]


class FaultRig:
    """A task queue of its own (``settings``: the rig's, for a worker of its own) whose worker
    a run may stop, kill and replace, and a client on it. ``hv`` holds libvirt connections to the
    hosts, through which the checks list the domains (a test-driver host lives in them: they are
    the in-process worker's too); ``hosts`` gives each run its hosts.

    By default the worker is ``ReplaceableWorker`` (in-process, its migrations slowed to keep
    ``phases``) with an in-process ordering worker. ``make_worker`` gives another (a
    ``WorkerProcess``, which runs the ordering queue too), made from the rig's settings;
    ``follow`` then keeps ``phases`` during each run."""

    def __init__(self, temporal: Client, settings: Settings, db: Database, hv: Hypervisors,
                 hosts: RunHosts, shape: Shape, evidence_dir: Path | None = None,
                 make_worker: Callable[[Settings], RunWorker] | None = None,
                 follow: Follow | None = None) -> None:
        self.settings = settings.model_copy(update={
            "task_queue": f"faults-{uuid.uuid4().hex[:6]}",
            "migrations_out_per_host": shape.parallel, "migrations_in_per_host": shape.parallel,
            "migrations_in_cluster": max(shape.parallel, settings.migrations_in_cluster),
            "migration_bandwidth_mib_s": shape.bandwidth_mib_s})
        self.temporal, self.db, self.hv, self.hosts, self.shape = temporal, db, hv, hosts, shape
        self.client = TaskomaticClient(temporal, self.settings, db, requested_by="bench.faults")
        self._stack = AsyncExitStack()
        self.phases: Phases = {}
        self.worker: RunWorker | None = None
        self.evidence_dir = evidence_dir  # where the histories of stuck tasks are saved
        self._make_worker, self._follow = make_worker, follow

    async def __aenter__(self) -> FaultRig:
        if self._make_worker is not None:
            self.worker = self._make_worker(self.settings)
        else:
            executor = self._stack.enter_context(ThreadPoolExecutor(
                max_workers=self.settings.activity_threads, thread_name_prefix="fault-activity"))
            self.worker = ReplaceableWorker(self.temporal, self.settings, self.hv, executor,
                                            self.shape.move_seconds, self.phases)
            await self._stack.enter_async_context(build_ordering_worker(self.temporal,
                                                                        self.settings))
        await self.worker.prepare()
        await self.worker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await self._stack.aclose()

    # --- one run -------------------------------------------------------------------------

    async def run(self, index: int, run_seed: str, plan: Plan) -> RunReport:
        report = RunReport(index=index, seed=run_seed, plan=plan)
        started = time.monotonic()
        rng = random.Random(f"{run_seed}:vms")
        prefix = f"f{uuid.uuid4().hex[:6]}"
        hosts = await asyncio.to_thread(self.hosts.make, prefix)
        killed: HostLike | None = None
        try:
            before = await asyncio.to_thread(self._populate, hosts[0], prefix, rng)
            following = (self._follow(hosts, set(before), self.phases)
                         if self._follow is not None else nullcontext())
            async with following:
                clear = await self.client.clear_host(ClearHostRequest(
                    host=hosts[0].name, parallel=self.shape.parallel))
                killed = await self._strike(clear, plan, report, hosts, rng)
                ids = [clear.id, *(f"{clear.id}-{slug}-{n}" for n in before
                                   for slug in ("migrate", "stop"))]
                report.violations += await self._settle(ids)
            report.clear_end = await _ending(clear)
            if killed is not None:
                self.hosts.revive(killed)  # on this thread: a daemon may die with its starter
                killed = None
            if plan.kind in RECONCILED:
                report.left = await asyncio.to_thread(check_run, self.db, self.hv, hosts,
                                                      before, clear.id)
                report.reconcile = await self._reconcile(prefix)
            report.violations += await asyncio.to_thread(check_run, self.db, self.hv, hosts,
                                                         before, clear.id)
        finally:
            if killed is not None:  # the run failed before it could revive the host
                self.hosts.revive(killed)
            await asyncio.to_thread(self.hosts.retire, hosts)
        report.seconds = time.monotonic() - started
        return report

    def _populate(self, host: HostLike, prefix: str, rng: random.Random) -> dict[str, Domain]:
        """Define ``vms`` domains on ``host`` (about one in four shut off, 1 or 2 vCPUs, MiB
        among ``shape.memory_mib``), record them, and return them as libvirt then has them."""
        conn = self.hv.connection(host.uri)
        for i in range(self.shape.vms):
            spec = DomainSpec(host=host.name, uri=host.uri, name=f"{prefix}-vm{i}",
                              uuid=str(uuid.uuid4()), vcpus=rng.choice((1, 2)),
                              memory_mib=rng.choice(self.shape.memory_mib))
            dom = conn.defineXML(build_domain_xml(spec))
            running = rng.random() >= 0.25
            if running:
                dom.create()
            inventory.record_vm(self.db, RecordVmInput(
                task_id=f"{prefix}-setup", name=spec.name, uuid=spec.uuid, host=host.name,
                vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                state=VmState.RUNNING if running else VmState.SHUTOFF))
        return {name: doms[0] for name, doms in libvirt_view(self.hv, [host]).items()}

    async def _strike(self, clear: TaskHandle, plan: Plan, report: RunReport,
                      hosts: Sequence[HostLike], rng: random.Random) -> HostLike | None:
        """Wait for the plan's point and apply its fault; note in ``report`` where it landed.
        Returns the host killed (``kill-destination``), to revive once the tasks ended."""
        view = await self._moves_once(clear.id, lambda v: v.moved >= plan.after_moved)
        if view is None:
            ended = not await _running(self.temporal, clear.id)
            report.point = (f"the clear {'ended' if ended else 'was still running'} before "
                            f"{plan.after_moved} VMs had moved")
            return None
        target = None
        if plan.phase != "anywhere":
            target = await self._migration_in(plan.phase, rng)
            if target is None:
                report.point = f"no migration was {plan.phase} ({_describe(view)})"
                return None
        await asyncio.sleep(plan.delay)
        view = await self.client.host_moves(clear.id)
        if view is None or not await _running(self.temporal, clear.id):
            report.point = "the clear had ended"
            return None
        report.landed, report.point = True, self._describe(view)
        if plan.kind == "cancel-clear":
            await clear.cancel()
        elif plan.kind == "terminate-clear":
            await self.temporal.get_workflow_handle(clear.id).terminate("bench.faults")
        elif plan.kind == "stop-worker":
            assert self.worker is not None
            closed = await self.worker.stop()
            await asyncio.sleep(plan.pause)
            await self.worker.start()
            if closed:
                report.point += (f"; {closed} workflow coroutines of the stopped worker made "
                                 "workflow calls while collected (harmless here)")
        elif plan.kind == "kill-worker":
            assert self.worker is not None
            await self.worker.kill()
            report.point += "; killed the worker (SIGKILL)"
            await asyncio.sleep(plan.pause)
            await self.worker.start()
        elif plan.kind == "kill-destination":
            return await self._kill_destination(target, hosts, report, rng)
        else:
            await self._cancel_child(clear.id, target, view, report, rng)
        return None

    async def _kill_destination(self, vm: str | None, hosts: Sequence[HostLike],
                                report: RunReport, rng: random.Random) -> HostLike:
        """Kill the hypervisor of ``vm``'s destination (None, or a migration no longer in
        flight: of a destination host at random)."""
        flying = self.phases.get(vm) if vm is not None else None
        names = [flying.destination] if flying is not None else sorted(
            h.name for h in hosts[1:])
        chosen = rng.choice(names)
        victim = next(h for h in hosts if h.name == chosen)
        await asyncio.to_thread(self.hosts.kill, victim)
        report.point += f"; killed the hypervisor of {victim.name}"
        return victim

    async def _cancel_child(self, clear_id: str, vm: str | None, view: HostTaskProgress,
                            report: RunReport, rng: random.Random) -> None:
        """Cancel the child moving ``vm`` (None: one in flight, at random)."""
        if vm is None:
            if not view.in_flight_vms:
                found = await self._moves_once(clear_id, lambda v: bool(v.in_flight_vms), 5.0)
                view = found or view
            if not view.in_flight_vms:
                report.landed, report.point = False, f"no child in flight ({_describe(view)})"
                return
            vm = rng.choice(sorted(view.in_flight_vms))
        child = f"{clear_id}-migrate-{vm}"
        try:
            await self.temporal.get_workflow_handle(child).cancel()
        except RPCError as err:
            report.landed = False
            report.point += f"; cancel of {child} refused: {err.message}"
            return
        report.point += f"; cancelled the child moving {vm}"

    async def _migration_in(self, phase: str, rng: random.Random) -> str | None:
        """A VM whose migration is in ``phase`` (the first seen, at random among several);
        None if none is within ``settle_seconds``."""
        deadline = time.monotonic() + self.shape.settle_seconds
        while time.monotonic() < deadline:
            found = sorted(vm for vm, now in self.phases.items() if now.phase == phase)
            if found:
                return rng.choice(found)
            await asyncio.sleep(POLL_SECONDS / 5)
        return None

    def _describe(self, view: HostTaskProgress) -> str:
        """The clear's moves and the phase of each migration in flight."""
        phases = ", ".join(f"{vm} {now.phase} to {now.destination}"
                           for vm, now in sorted(self.phases.items()))
        return f"{_describe(view)}; migrations: {phases or 'none'}"

    async def _moves_once(self, clear_id: str, ready: Callable[[HostTaskProgress], bool],
                          timeout: float | None = None) -> HostTaskProgress | None:
        """The clear's ``moves`` once ``ready`` holds; None if it ended (or ``timeout`` passed)
        first."""
        deadline = time.monotonic() + (timeout or self.shape.settle_seconds)
        while time.monotonic() < deadline:
            view = await self.client.host_moves(clear_id)
            if view is not None and ready(view):
                return view
            if not await _running(self.temporal, clear_id, missing=True):
                return None  # ended (a closed task still answers the query)
            await asyncio.sleep(POLL_SECONDS)
        return None

    async def _settle(self, task_ids: list[str]) -> list[Violation]:
        """Wait until none of ``task_ids`` runs (ids never started count as ended); a task still
        running after ``settle_seconds`` is a violation, and is then terminated."""
        deadline = time.monotonic() + self.shape.settle_seconds
        while True:
            running = [t for t in task_ids if await _running(self.temporal, t)]
            if not running or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        found = []
        for task_id in running:
            status = await self.client.task(task_id).describe()
            step = status.progress.current_step if status.progress else None
            found.append(Violation("ended", task_id, "-", f"Temporal has it still "
                                   f"{status.state} {self.shape.settle_seconds:g}s after the "
                                   f"fault (step: {step}){await self._evidence(task_id)}"))
            await self.temporal.get_workflow_handle(task_id).terminate("bench.faults: stuck")
        return found

    async def _evidence(self, task_id: str) -> str:
        """Why ``task_id`` is stuck, as far as its history tells: the last workflow task failure
        (a nondeterminism error, say), and where its history was saved (``evidence_dir``), to
        replay with ``temporalio.worker.Replayer``."""
        history = await self.temporal.get_workflow_handle(task_id).fetch_history()
        failures = [e.workflow_task_failed_event_attributes.failure.message
                    for e in history.events
                    if e.HasField("workflow_task_failed_event_attributes")]
        said = f"; workflow task failed: {failures[-1]}" if failures else ""
        if self.evidence_dir is not None:
            self.evidence_dir.mkdir(parents=True, exist_ok=True)
            path = self.evidence_dir / f"{task_id}.json"
            path.write_text(history.to_json(), encoding="utf-8")
            said += f"; history in {path}"
        return said

    async def _reconcile(self, prefix: str) -> list[str]:
        """Run a Reconcile to its end; its findings about the run (its names start with
        ``prefix``), one line each."""
        handle = await self.client.submit("Reconcile", ReconcileRequest())
        done: ReconcileReport = await handle.result()
        return [f"{f.kind} {f.subject} ({'repaired' if f.repaired else 'not repaired'}): "
                f"{f.detail}" for f in done.findings if prefix in f.subject + f.detail]




async def _running(temporal: Client, task_id: str, missing: bool = False) -> bool:
    """Whether ``task_id`` runs (``missing``: the answer for an id Temporal does not know)."""
    try:
        desc = await temporal.get_workflow_handle(task_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return missing
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


async def _ending(clear: TaskHandle) -> str:
    """How the clear ended, in a few words."""
    try:
        result: Any = await clear.result()
    except TaskError as err:
        return f"{err.failure.error_type}: {err.failure.message}"
    except Exception as err:  # terminated: the SDK's own error
        return f"{type(err).__name__}: {err}"
    state = result.get("state") if isinstance(result, dict) else getattr(result, "state", "?")
    return f"complete ({state})"


def _describe(view: HostTaskProgress) -> str:
    flying = ", ".join(sorted(view.in_flight_vms)) or "none"
    return (f"moved {view.moved}, failed {view.failed}, remaining {view.remaining}, "
            f"in flight: {flying}")


