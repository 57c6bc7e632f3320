"""Tasks in the correct order: per-resource lines, prerequisites, waiting states, termination.

On a real Temporal dev server and PostgreSQL. ``HoldResources`` (tests/holding.py) is a real
task that holds resources until signalled, so a test controls who holds what for how long.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from holding import HoldRequest, HoldResources
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.batch import BatchItem
from starter.client import RequestError, TaskError, TaskHandle, TaskomaticClient
from starter.dev.parts import temporal_binary
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    StartVmRequest,
    StopVmRequest,
    TaskProgress,
    TaskState,
)
from taskomatic.settings import Settings
from worker import WORKFLOW_RUNNER, activity_list, build_ordering_worker
from workflows.kinds import KINDS, TASK_WORKFLOWS, TaskKind

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def tasks(temporal_env: WorkflowEnvironment, settings: Settings, hypervisors: Hypervisors,
                db: Database, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[TaskomaticClient]:
    """A client and worker on a queue of their own that also know ``HoldResources``."""
    monkeypatch.setitem(KINDS, "HoldResources", TaskKind(HoldResources, "hold"))
    own = settings.model_copy(update={"task_queue": f"order-{uuid.uuid4().hex[:6]}",
                                      "migrations_in_cluster": 2})
    with ThreadPoolExecutor(max_workers=16) as executor:
        async with Worker(temporal_env.client, task_queue=own.task_queue,
                          workflows=[*TASK_WORKFLOWS, HoldResources],
                          workflow_runner=WORKFLOW_RUNNER,
                          activities=activity_list(own, hypervisors, temporal_env.client),
                          activity_executor=executor), \
                build_ordering_worker(temporal_env.client, own):
            yield TaskomaticClient(temporal_env.client, own, db)


def _names(label: str) -> Callable[[str], str]:
    prefix = uuid.uuid4().hex[:6]
    return lambda name: f"{label}:{prefix}-{name}"


async def _hold(client: TaskomaticClient, names: list[str], *, hold: bool = False,
                after: list[str] | None = None, fail: bool = False) -> TaskHandle:
    return await client.submit("HoldResources", HoldRequest(names=names, hold=hold, fail=fail,
                                                            after=after or []))


async def _finish(client: TaskomaticClient, handle: TaskHandle) -> None:
    await client.temporal.get_workflow_handle(handle.id).signal("finish")


async def _until(probe: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    """Wait (briefly sleeping) until ``probe`` returns something truthy: visibility and state
    updates are asynchronous."""
    for _ in range(int(seconds / 0.1)):
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _state(handle: TaskHandle) -> TaskState:
    return (await handle.describe()).state


async def _in_state(handle: TaskHandle, state: TaskState) -> Any:
    async def probe() -> bool:
        return await _state(handle) == state
    return await _until(probe, f"{handle.id} to be {state}")


def _interval(progress: TaskProgress) -> tuple[datetime, datetime]:
    """When the task held its resources: from its turn coming to the start of its last step.
    The last step releases them in its own transaction (``i16-release-with-last-step``), so
    the next task may be granted them before this task's workflow records that step's end
    (its ``finished_at`` is when the workflow saw the result); every step before it ended."""
    waited = next(s for s in progress.steps if s.name.startswith("wait for vm:"))
    last = progress.steps[-1]
    assert waited.finished_at and last.started_at and last.finished_at
    assert all(s.finished_at and s.finished_at <= last.started_at for s in progress.steps[:-1])
    return waited.finished_at, last.started_at


async def test_fifty_interleaved_tasks_on_five_vms_run_one_at_a_time_in_order(
        tasks: TaskomaticClient, lab: Lab) -> None:
    host = lab.host(vcpus=8)
    vms = [lab.vm_name(f"ord{i}") for i in range(5)]
    for vm in vms:
        await (await tasks.create_vm(CreateVmRequest(name=vm, host=host.name))).result()
    submitted: dict[str, list[TaskHandle]] = {vm: [] for vm in vms}
    for i in range(50):  # interleaved: vm0, vm1, ... vm4, vm0, ...
        vm = vms[i % 5]
        if (i // 5) % 2 == 0:
            handle = await tasks.start_vm(StartVmRequest(name=vm))
        else:
            handle = await tasks.stop_vm(StopVmRequest(name=vm, force=True))
        submitted[vm].append(handle)
    results = await asyncio.gather(*(h.result() for hs in submitted.values() for h in hs))
    assert len(results) == 50
    overlaps_across_vms = 0
    spans: list[tuple[datetime, datetime]] = []
    for vm, handles in submitted.items():
        progress = [await h.progress() for h in handles]
        intervals = [_interval(p) for p in progress if p is not None]
        assert len(intervals) == 10
        for earlier, later in itertools.pairwise(intervals):
            # In submission order, and never overlapping.
            assert later[0] >= earlier[1], f"{vm}: a task ran before the one submitted before it"
        spans.append((intervals[0][0], intervals[-1][1]))
    for i, a in enumerate(spans):  # different VMs were not serialized behind one another
        overlaps_across_vms += sum(1 for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1])
    assert overlaps_across_vms > 0
    # The last task on each VM was a forced stop, so all ended shut off, as the order says.
    assert not any(lab.domains(host).values())
    assert not [c for c in ordering.queue(tasks.db) if c.resource.startswith("vm:vm-")
                and c.resource[3:] in vms]


async def test_waiting_task_names_the_holder_and_runs_when_it_finishes(
        tasks: TaskomaticClient) -> None:
    name = _names("vm")
    holder = await _hold(tasks, [name("a")], hold=True)
    await _in_state(holder, "running")
    waiter = await _hold(tasks, [name("a")])
    await _in_state(waiter, "waiting")
    status = await waiter.describe()
    assert status.waiting_on == [f"{name('a')} held by {holder.id}"]
    listed = await _until(lambda: _listed(tasks, "waiting", waiter.id), "waiting in the list")
    assert listed.waiting_on == status.waiting_on and listed.resources == [name("a")]
    await _finish(tasks, holder)
    await waiter.result()
    done = await waiter.describe()
    assert done.state == "complete" and done.started_at is not None
    assert done.submitted_at is not None and done.finished_at is not None
    assert done.submitted_at <= done.started_at <= done.finished_at


async def test_a_task_that_never_waited_started_at_its_submission(
        tasks: TaskomaticClient) -> None:
    name = _names("vm")
    holder = await _hold(tasks, [name("a")], hold=True)
    await _in_state(holder, "running")
    running = await holder.describe()
    assert running.waiting_on == [] and running.started_at == running.submitted_at
    await _finish(tasks, holder)
    await holder.result()
    done = await holder.describe()
    assert done.state == "complete" and done.started_at == done.submitted_at
    assert done.finished_at is not None and done.started_at <= done.finished_at


async def _listed(client: TaskomaticClient, state: TaskState, task_id: str) -> Any:
    return next((t for t in await client.tasks(state=state) if t.id == task_id), None)


async def test_multi_resource_tasks_in_any_order_never_deadlock(tasks: TaskomaticClient) -> None:
    name = _names("pool")
    a, b, c = name("a"), name("b"), name("c")
    gate = await _hold(tasks, [a, b, c], hold=True)
    await _in_state(gate, "running")
    shapes = [[a, b], [b, a], [c, a], [b], [a, c, b], [c]] * 3
    handles = [await _hold(tasks, shape) for shape in shapes]
    await _finish(tasks, gate)
    finished = await asyncio.gather(*(h.result() for h in handles))
    # Tasks sharing a resource ran in submission order.
    for i, first in enumerate(finished):
        for j in range(i + 1, len(finished)):
            if set(shapes[i]) & set(shapes[j]):
                assert finished[j].ran_at >= first.finished_at


async def test_slots_admit_their_capacity_at_once(tasks: TaskomaticClient) -> None:
    slot = f"migrate:{uuid.uuid4().hex[:6]}"  # a counted slot: capacity 2 on this worker
    holders = [await _hold(tasks, [slot], hold=True) for _ in range(4)]
    await _in_state(holders[1], "running")
    await _in_state(holders[2], "waiting")
    await _in_state(holders[3], "waiting")
    assert await _state(holders[0]) == "running"
    await _finish(tasks, holders[1])

    async def one_more_runs() -> list[str]:
        states = [await _state(h) for h in holders[2:]]
        return states if sorted(states) == ["running", "waiting"] else []
    # A freed slot goes to one of the waiters (slots are not first-come-first-served), and only
    # one: still two holders at most.
    states = await _until(one_more_runs, "one of the waiters to take the freed slot")
    await asyncio.sleep(0.5)
    assert [await _state(h) for h in holders[2:]] == states
    for h in (holders[0], *holders[2:]):
        await _finish(tasks, h)
    await asyncio.gather(*(h.result() for h in holders))


async def test_prerequisites_run_chains_and_diamonds_in_dependency_order(
        tasks: TaskomaticClient) -> None:
    name = _names("x")
    top = await _hold(tasks, [name("top")], hold=True)
    left = await _hold(tasks, [name("left")], after=[top.id])
    right = await _hold(tasks, [name("right")], after=[top.id])
    bottom = await _hold(tasks, [name("bottom")], after=[left.id, right.id])
    chained = await _hold(tasks, [], after=[bottom.id])
    await _in_state(bottom, "waiting")
    assert (await bottom.describe()).waiting_on == [f"prerequisite {left.id}",
                                                    f"prerequisite {right.id}"]
    await asyncio.sleep(0.5)
    assert await _state(left) == "waiting"  # nothing moves before its prerequisite ends
    await _finish(tasks, top)
    t, l_, r, b, c = [await h.result() for h in (top, left, right, bottom, chained)]
    assert l_.ran_at >= t.finished_at and r.ran_at >= t.finished_at
    assert b.ran_at >= max(l_.finished_at, r.finished_at)
    assert c.ran_at >= b.finished_at


@pytest.mark.parametrize("ending", ["fails", "is cancelled"])
async def test_a_prerequisite_that_does_not_complete_fails_its_dependents(
        tasks: TaskomaticClient, ending: str) -> None:
    name = _names("x")
    first = await _hold(tasks, [name("a")], hold=True, fail=ending == "fails")
    second = await _hold(tasks, [name("b")], after=[first.id])
    third = await _hold(tasks, [name("c")], after=[second.id])
    await _in_state(second, "waiting")
    if ending == "fails":
        await _finish(tasks, first)
    else:
        await tasks.cancel(first.id)
    with pytest.raises(TaskError) as failed:
        await second.result()
    word = "failed" if ending == "fails" else "cancelled"
    assert failed.value.failure.error_type == "PrerequisiteFailed"
    assert f"prerequisite task {first.id} ended {word}" in failed.value.failure.message
    steps = [s.name for s in (await second.progress() or TaskProgress(task_id="", kind="",
                                                                      phase="failed")).steps]
    assert steps == ["wait for prerequisites"]  # it did nothing
    with pytest.raises(TaskError) as cascaded:
        await third.result()
    assert second.id in cascaded.value.failure.message
    assert not ordering.queue(tasks.db, [first.id, second.id, third.id])


async def test_unknown_prerequisite_is_refused_before_anything_starts(
        tasks: TaskomaticClient) -> None:
    with pytest.raises(RequestError) as refused:
        await _hold(tasks, [], after=["no-such-task-123"])
    assert refused.value.field == "after" and "no-such-task-123" in str(refused.value)


async def test_terminated_holder_releases_and_the_next_in_line_runs(
        tasks: TaskomaticClient, temporal_env: WorkflowEnvironment) -> None:
    name = _names("vm")
    holder = await _hold(tasks, [name("t")], hold=True)
    await _in_state(holder, "running")
    first = await _hold(tasks, [name("t")])
    second = await _hold(tasks, [name("t")])
    await _in_state(second, "waiting")
    address = temporal_env.client.service_client.config.target_host
    done = subprocess.run([temporal_binary(), "workflow", "terminate", "--address", address,
                           "--workflow-id", holder.id, "--reason", "test"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    a, b = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 60)
    assert b.ran_at >= a.finished_at
    assert (await holder.describe()).state == "cancelled"
    assert not ordering.queue(tasks.db, [holder.id, first.id, second.id])


async def test_cancelled_task_releases_and_does_not_block_the_line(
        tasks: TaskomaticClient) -> None:
    name = _names("vm")
    holder = await _hold(tasks, [name("c")], hold=True)
    await _in_state(holder, "running")
    doomed = await _hold(tasks, [name("c")], hold=True)
    after_it = await _hold(tasks, [name("c")])
    await _in_state(doomed, "waiting")
    await tasks.cancel(doomed.id)
    await _in_state(doomed, "cancelled")
    assert [c.task_id for c in ordering.queue(tasks.db, [doomed.id])] == []
    await _finish(tasks, holder)
    await after_it.result()
    status = await doomed.describe()
    assert status.state == "cancelled" and status.error is not None


async def test_failed_holder_releases(tasks: TaskomaticClient) -> None:
    name = _names("vm")
    holder = await _hold(tasks, [name("f")], hold=True, fail=True)
    await _in_state(holder, "running")
    waiter = await _hold(tasks, [name("f")])
    await _finish(tasks, holder)
    with pytest.raises(TaskError):
        await holder.result()
    await waiter.result()
    failed = await holder.describe()
    assert failed.state == "error" and failed.error is not None
    assert failed.error.message.endswith("told to fail")


async def test_a_batch_runs_its_tasks_in_dependency_order(tasks: TaskomaticClient,
                                                          lab: Lab) -> None:
    host = lab.host(vcpus=4)
    vms = [lab.vm_name(f"b{i}") for i in range(3)]
    items = [BatchItem(key=f"make-{vm}", kind="CreateVm",
                       request={"name": vm, "host": host.name, "start": True}) for vm in vms]
    items += [BatchItem(key=f"stop-{vm}", kind="StopVm", request={"name": vm, "force": True},
                        after=[f"make-{vm}"]) for vm in vms]
    items.append(BatchItem(key="gone", kind="DestroyVm", request={"name": vms[0]},
                           after=[f"stop-{vm}" for vm in vms]))
    submitted = dict(await tasks.submit_batch(list(reversed(items))))  # order given is free
    results = {key: await handle.result() for key, handle in submitted.items()}
    for vm in vms:
        stop = await submitted[f"stop-{vm}"].progress()
        made = await submitted[f"make-{vm}"].progress()
        assert stop and made and stop.steps[1].started_at >= made.steps[-1].finished_at
    gone = await submitted["gone"].progress()
    assert gone and gone.steps[0].name == "wait for prerequisites"
    assert results["gone"].state is None
    assert lab.domains(host) == {vms[1]: False, vms[2]: False}


@pytest.mark.parametrize(("items", "field"), [
    ([{"key": "a", "kind": "StopVm", "request": {"name": "x"}, "after": ["b"]},
      {"key": "b", "kind": "StopVm", "request": {"name": "x"}, "after": ["a"]}], "items[0].after"),
    ([{"key": "a", "kind": "Nope"}], "items[0].kind"),
    ([{"key": "a", "kind": "StopVm", "request": {"name": "x"}},
      {"key": "a", "kind": "StopVm", "request": {"name": "x"}}], "items[1].key"),
    ([{"key": "a", "kind": "CreateVm", "request": {"name": "ok", "vcpus": 0}}],
     "items[0].request.vcpus"),
    ([{"key": "a", "kind": "StopVm", "request": {"name": "x"}, "after": ["missing-task"]}],
     "after"),
])
async def test_a_bad_batch_is_refused_whole(tasks: TaskomaticClient, items: list[dict[str, Any]],
                                            field: str) -> None:
    before = len(await tasks.tasks())
    with pytest.raises(RequestError) as refused:
        await tasks.submit_batch([BatchItem.model_validate(i) for i in items])
    assert refused.value.field == field
    assert len(await tasks.tasks()) == before
