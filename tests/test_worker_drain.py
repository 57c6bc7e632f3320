"""A worker process stopped with SIGTERM (a rolling deploy) drains: it takes no new work, lets
the activity it runs finish (``TASKOMATIC_WORKER_DRAIN_SECONDS``), hands a task's wait for another
task over at once, and only then exits; another worker carries the tasks on.

The worker is the real ``python -m worker`` program in a process of its own, with one activity
made slow (``start_domain`` takes ``SLOW_SECONDS`` and says when it begins and ends), in a
Temporal namespace of its own (its reconcile schedule stays out of the suite's namespace).

A worker killed with SIGKILL in the middle of a step that does not heartbeat on its own
(``reserve_capacity`` made slow and quiet) has that step retried elsewhere after the step's
heartbeat timeout (10 s: the worker heartbeats it, ``activities.heartbeats``), not its
start-to-close timeout; a cancel of the task still lets such a step run to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from conftest import Lab
from starter.client import TaskomaticClient
from starter.tasks import TaskError
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest, VmState
from taskomatic.settings import Settings
from taskomatic.temporal import ensure_search_attributes
from worker import build_ordering_worker, build_worker
from workflows.runbook import DATABASE, STEP_HEARTBEAT

ROOT = Path(__file__).resolve().parent.parent
SLOW_SECONDS = 10.0
DRAIN_SECONDS = 120.0  # far beyond what the slow step takes, even on a loaded machine


def _slowed_worker(name: str, arg_type: str, result_type: str, wait: str) -> str:
    """The source of a worker program (``python -c``) whose activity ``name`` first says "slow
    step begins", runs ``wait`` (lines of code), says "slow step ends", then does its work."""
    return f"""
import time
from temporalio import activity
from taskomatic.models import {arg_type}, {result_type}
import worker

real = worker.activity_list


def slowed(settings, hypervisors, client):
    acts = list(real(settings, hypervisors, client))
    original = next(a for a in acts if getattr(a, "__name__", "") == "{name}")

    @activity.defn(name="{name}")
    def step(inp: {arg_type}) -> {result_type}:
        print("slow step begins", flush=True)
{wait}
        print("slow step ends", flush=True)
        return original(inp)

    return [step if a is original else a for a in acts]


worker.activity_list = slowed
worker.main()
"""


SLOW_WORKER = _slowed_worker("start_domain", "DomainRef", "DomainReport", f"""\
        deadline = time.monotonic() + {SLOW_SECONDS}
        while time.monotonic() < deadline:
            activity.heartbeat()  # where a cancel would be heard
            time.sleep(0.1)""")


async def _namespace(temporal_env: WorkflowEnvironment) -> tuple[str, Client]:
    name = f"drain-{uuid.uuid4().hex[:6]}"
    await temporal_env.client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=name, workflow_execution_retention_period=Duration(seconds=86_400)))
    target = temporal_env.client.service_client.config.target_host
    deadline = time.monotonic() + 20
    while True:
        try:
            client = await Client.connect(target, namespace=name,
                                          data_converter=pydantic_data_converter)
            await client.count_workflows()
            await ensure_search_attributes(client, name)
            return name, client
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
async def drained(temporal_env: WorkflowEnvironment, settings: Settings, db: Database
                  ) -> AsyncIterator[tuple[TaskomaticClient, dict[str, str]]]:
    """A client of a namespace and task queue of their own, and the environment of a worker
    process serving them."""
    namespace, client = await _namespace(temporal_env)
    own = settings.model_copy(update={"temporal_namespace": namespace,
                                      "task_queue": f"drain-{uuid.uuid4().hex[:6]}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
               TASKOMATIC_TEMPORAL_NAMESPACE=namespace, TASKOMATIC_TASK_QUEUE=own.task_queue,
               TASKOMATIC_DATABASE_URL=settings.database_url, TASKOMATIC_LOG_FORMAT="json",
               TASKOMATIC_WORKER_DRAIN_SECONDS=str(DRAIN_SECONDS), PYTHONPATH=str(ROOT),
               TASKOMATIC_MIGRATION_SAVE_DIR=str(settings.migration_save_dir))
    yield TaskomaticClient(client, own, db), env


@contextlib.asynccontextmanager
async def _workers_here(client: TaskomaticClient, hypervisors: Hypervisors
                        ) -> AsyncIterator[None]:
    """A task worker and an ordering worker in this process (whose hypervisor connections hold
    the test-driver hosts), for the block."""
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(client.temporal, client.settings, hypervisors, executor), \
                build_ordering_worker(client.temporal, client.settings):
            yield


async def _pending(client: TaskomaticClient, task_id: str, activity_type: str) -> bool:
    desc = await client.temporal.get_workflow_handle(task_id).describe()
    return any(p.activity_type.name == activity_type
               and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
               for p in desc.raw_description.pending_activities)


async def _until(check: object, what: str, log: Path, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, (f"timed out waiting for {what}; the worker said:\n"
                                             f"{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


async def test_a_stopped_worker_finishes_its_step_and_hands_waits_over(
        drained: tuple[TaskomaticClient, dict[str, str]], lab: Lab, hypervisors: Hypervisors,
        tmp_path: Path) -> None:
    client, env = drained
    host = lab.host()
    first, second = lab.vm_name("drain1"), lab.vm_name("drain2")
    out = (tmp_path / "worker.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WORKER], cwd=tmp_path, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        slow = await client.create_vm(CreateVmRequest(name=first, host=host.name, start=True))
        waiting = await client.create_vm(CreateVmRequest(name=second, host=host.name,
                                                         after=[slow.id]))

        async def slow_step_runs() -> bool:
            return "slow step begins" in Path(out.name).read_text()

        await _until(slow_step_runs, "the slow step to begin", Path(out.name))
        await _until(lambda: _pending(client, waiting.id, "await_task_end"),
                     "the second task to wait for the first", Path(out.name))
        assert "slow step ends" not in Path(out.name).read_text(), "too late to test the drain"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, DRAIN_SECONDS + 20)
        took = time.monotonic() - began
        said = Path(out.name).read_text()
        assert code == 0, said
        assert "slow step ends" in said, said  # the running step was not cut off
        # ... and the wait did not hold the drain: the worker left when the step was done.
        assert took < DRAIN_SECONDS / 2, (took, said)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()

    # Another worker carries both tasks on: the first from after its (completed) start step.
    async with _workers_here(client, hypervisors):
        made = await asyncio.wait_for(slow.result(), 120)
        await asyncio.wait_for(waiting.result(), 120)
    assert made.state == VmState.RUNNING
    history = await client.temporal.get_workflow_handle(slow.id).fetch_history()
    starts = [e for e in history.events
              if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
              and e.activity_task_scheduled_event_attributes.activity_type.name == "start_domain"]
    completed = [e for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                 and e.activity_task_completed_event_attributes.scheduled_event_id
                 in {s.event_id for s in starts}]
    assert len(starts) == 1 and len(completed) == 1
    started = next(e for e in history.events
                   if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                   and e.activity_task_started_event_attributes.scheduled_event_id
                   == starts[0].event_id)
    assert started.activity_task_started_event_attributes.attempt == 1  # never retried


QUIET_SECONDS = 20.0

QUIET_WORKER = _slowed_worker("reserve_capacity", "ReserveCapacityInput", "Reservation",
                              f"        time.sleep({QUIET_SECONDS})  # no heartbeat of its own")


def _attempts(history: object, activity_type: str) -> list[int]:
    """For each ``activity_type`` step that ended, the attempt that ended it (a history records
    a step's start only with its last attempt)."""
    scheduled = {e.event_id for e in history.events  # type: ignore[attr-defined]
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                 and e.activity_task_scheduled_event_attributes.activity_type.name
                 == activity_type}
    return [e.activity_task_started_event_attributes.attempt
            for e in history.events  # type: ignore[attr-defined]
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and e.activity_task_started_event_attributes.scheduled_event_id in scheduled]


def _quiet_worker(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "worker.out"
    proc = subprocess.Popen([sys.executable, "-c", QUIET_WORKER], cwd=tmp_path, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, log


async def test_a_step_whose_worker_died_is_retried_after_its_heartbeat_timeout(
        drained: tuple[TaskomaticClient, dict[str, str]], lab: Lab, hypervisors: Hypervisors,
        tmp_path: Path) -> None:
    assert DATABASE.start_to_close.total_seconds() > 2 * STEP_HEARTBEAT.total_seconds()
    client, env = drained
    host = lab.host()
    proc, log = _quiet_worker(env, tmp_path)
    try:
        task = await client.create_vm(CreateVmRequest(name=lab.vm_name("hb"), host=host.name,
                                                      start=True))

        async def begun() -> bool:
            return "slow step begins" in log.read_text()

        await _until(begun, "the slow step to begin", log)
        await asyncio.sleep(STEP_HEARTBEAT.total_seconds() * 0.6)  # past its first heartbeats
        proc.kill()
        proc.wait()
        killed = datetime.now(UTC)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    async with _workers_here(client, hypervisors):
        made = await asyncio.wait_for(task.result(), 120)
    assert made.state == VmState.RUNNING
    history = await client.temporal.get_workflow_handle(task.id).fetch_history()
    assert _attempts(history, "reserve_capacity") == [2]  # the killed attempt, then one
    # Retried once its heartbeats stopped (within the heartbeat timeout of the kill), not at
    # its start-to-close timeout (~23 s after the kill here).
    retried = next(e.event_time.ToDatetime(UTC) for e in history.events
                   if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                   and e.activity_task_started_event_attributes.attempt == 2)
    assert (retried - killed).total_seconds() < STEP_HEARTBEAT.total_seconds() + 3, retried


async def test_a_cancel_lets_a_step_without_heartbeats_of_its_own_run_to_its_end(
        drained: tuple[TaskomaticClient, dict[str, str]], lab: Lab, tmp_path: Path) -> None:
    client, env = drained
    host = lab.host()
    proc, log = _quiet_worker(env, tmp_path)
    try:
        task = await client.create_vm(CreateVmRequest(name=lab.vm_name("hbc"), host=host.name))

        async def begun() -> bool:
            return "slow step begins" in log.read_text()

        await _until(begun, "the slow step to begin", log)
        await asyncio.sleep(STEP_HEARTBEAT.total_seconds() * 0.5)  # heartbeats answered since
        await client.cancel(task.id)
        with pytest.raises(TaskError, match="cancelled"):
            await asyncio.wait_for(task.result(), 120)
        said = log.read_text()
        assert "slow step ends" in said, said  # not cut off by the cancel ...
        history = await client.temporal.get_workflow_handle(task.id).fetch_history()
        assert _attempts(history, "reserve_capacity") == [1]
        # ... and its reservation, made after the cancel, was undone by the task.
        with lab.db.transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM reservations WHERE task_id = %s", (task.id,))
            assert cur.fetchone()["n"] == 0, said
    finally:
        proc.kill()
        proc.wait()
