"""Cancelling a task never leaves a half-done move (issue 12: cases 1, 3 and 4, and the workflow
side of case 2), on libvirt test-driver hosts with real Temporal and PostgreSQL.

After every cancel the invariants are checked against libvirt itself, not the inventory: each VM
is defined on exactly one host, the inventory records it there in the state libvirt reports, no
reservation and no claim is left, and every task involved (children included) has ended.

``rig`` is a worker of the tests' own whose guests ignore ACPI shutdown (a graceful stop waits its
whole timeout), whose migrations and starts wait at gates the test opens, and whose claims of a
place in line can be made slow: the moments a cancel must meet.

Every cancelled task's history is replayed (the cancel paths are deterministic); with
``TASKOMATIC_RECORD_HISTORIES`` set they are also written to ``tests/histories/`` under their task
ids, which is why those ids are the tests' own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import only_hosts_up
from lab_fixtures import QemuLab
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from test_clear_host import fill
from test_migration import reservations
from test_replay import HISTORIES

from activities.migration import HEARTBEAT_THROTTLE
from activities.ordering import OrderingActivities
from conftest import Lab
from starter.client import TaskError, TaskHandle, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    BeginMaintenanceResult,
    ClaimInput,
    ClaimResult,
    ClearHostRequest,
    CreateVmRequest,
    DomainRef,
    DomainReport,
    HostNameInput,
    HostState,
    MigrateDomainInput,
    MigrateVmRequest,
    MigrationReport,
    RestoreHostRequest,
    StartVmRequest,
    StopVmRequest,
    VmState,
    child_task_id,
)
from taskomatic.settings import Settings
from worker import TASK_WORKFLOWS, WORKFLOW_RUNNER, activity_list
from workflows.ordering import ordering_queue

pytestmark = pytest.mark.asyncio


def violations(lab: Lab | QemuLab, db: Database, names: list[str]) -> list[str]:
    """What is wrong with ``names`` (all VMs of the lab's hosts), libvirt being the truth."""
    seen: dict[str, list[tuple[str, bool]]] = {}
    for host in lab.hosts:
        for name, running in lab.domains(host).items():
            seen.setdefault(name, []).append((host.name, running))
    problems = [f"{name} is not one of the test's VMs" for name in set(seen) - set(names)]
    for name in names:
        where = seen.get(name, [])
        if len(where) != 1:
            problems.append(f"{name} is defined on {[h for h, _ in where] or 'no host'}")
            continue
        host, running = where[0]
        found = inventory.get_vm(db, name)
        state = "running" if running else "shutoff"
        if found is None:
            problems.append(f"{name} runs on {host} but has no inventory row")
        elif (found.vm.host, found.vm.state) != (host, state):
            problems.append(f"{name}: libvirt {state} on {host}, inventory "
                            f"{found.vm.state} on {found.vm.host}")
    problems += [f"{vm} still holds a reservation"
                 for vm in reservations(db, f"vm-{lab.prefix}")]
    problems += [f"claim left: {c.resource} by {c.task_id}" for c in ordering.queue(db)
                 if lab.prefix in c.resource or lab.prefix in c.task_id]
    return problems


def assert_consistent(lab: Lab | QemuLab, db: Database, names: list[str]) -> None:
    problems = violations(lab, db, names)
    assert not problems, "\n".join(problems)


async def in_status(client: TaskomaticClient, task_ids: list[str],
                    status: WorkflowExecutionStatus) -> list[str]:
    """Those of ``task_ids`` whose execution is in ``status`` (an id never started is none)."""
    found = []
    for task_id in task_ids:
        try:
            desc = await client.temporal.get_workflow_handle(task_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        if desc.status == status:
            found.append(task_id)
    return found


async def still_running(client: TaskomaticClient, task_ids: list[str]) -> list[str]:
    """Those of ``task_ids`` Temporal has and has not closed (an id never started is fine)."""
    return await in_status(client, task_ids, WorkflowExecutionStatus.RUNNING)


async def ends_cancelled(handle: TaskHandle, within: float = 120) -> None:
    """The task ends cancelled (not failed, not terminated, not complete), having gone through
    its own cancellation: its progress says so and no step of it is left running."""
    with pytest.raises(TaskError) as ended:
        await asyncio.wait_for(handle.result(), within)
    assert ended.value.failure.error_type == "CancelledError", ended.value.failure
    desc = await handle._handle.describe()
    assert desc.status == WorkflowExecutionStatus.CANCELED
    progress = await handle.progress()
    assert progress is not None
    assert progress.state == "cancelled", progress
    assert [s.name for s in progress.steps if s.state == "running"] == []


async def assert_replays(client: TaskomaticClient, task_ids: list[str], record: bool = True
                         ) -> None:
    """Today's code replays each task's history (with ``record``, also written when
    TASKOMATIC_RECORD_HISTORIES is set: the file name is the task id, as child ids derive
    from it)."""
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    for task_id in task_ids:
        history = await client.temporal.get_workflow_handle(task_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{task_id}: {result.replay_failure}"
        if record and os.environ.get("TASKOMATIC_RECORD_HISTORIES"):
            (HISTORIES / f"{task_id}.json").write_text(history.to_json())


async def cancelled_among(client: TaskomaticClient, task_ids: list[str]) -> list[str]:
    """Those of ``task_ids`` that ended cancelled."""
    return await in_status(client, task_ids, WorkflowExecutionStatus.CANCELED)


async def until(probe: Callable[[], Awaitable[Any]], what: str, seconds: float = 30.0) -> Any:
    for _ in range(int(seconds / 0.05)):
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def at_step(handle: TaskHandle, step: str) -> None:
    async def there() -> bool:
        progress = await handle.progress()
        return progress is not None and progress.current_step == step
    await until(there, f"{handle.id} at '{step}'")


async def in_state(handle: TaskHandle, state: str) -> None:
    async def there() -> bool:
        progress = await handle.progress()
        return progress is not None and progress.state == state
    await until(there, f"{handle.id} {state}")


# --- the rig ----------------------------------------------------------------------------------


@dataclass
class Rig:
    client: TaskomaticClient
    moves_open: threading.Event = field(default_factory=threading.Event)
    starts_open: threading.Event = field(default_factory=threading.Event)
    # A migration cancelled while it waits still moves the VM (its abort came too late).
    finish_cancelled_moves: bool = False
    claim_delay: float = 0.0
    claiming: threading.Event = field(default_factory=threading.Event)
    enter_delay: float = 0.0  # entering maintenance (one transaction) takes this long
    migrating: list[str] = field(default_factory=list)


@pytest.fixture
async def rig(temporal_env: WorkflowEnvironment, settings: Settings, hypervisors: Hypervisors,
              db: Database) -> AsyncIterator[Rig]:
    own = settings.model_copy(update={"task_queue": f"cancel-{uuid.uuid4().hex[:6]}",
                                      "migrations_in_cluster": 1})
    the_rig = Rig(TaskomaticClient(temporal_env.client, own, db))
    the_rig.moves_open.set()
    the_rig.starts_open.set()
    acts = list(activity_list(own, hypervisors, temporal_env.client))
    real = {getattr(a, "__name__", ""): a for a in acts}

    @activity.defn(name="migrate_domain")
    async def migrate_domain(inp: MigrateDomainInput) -> MigrationReport:
        the_rig.migrating.append(inp.name)
        try:
            while not the_rig.moves_open.is_set():
                activity.heartbeat()  # a cancel arrives with a heartbeat's answer
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not the_rig.finish_cancelled_moves:
                raise
            await asyncio.sleep(1.0)  # the job runs on while the abort is on its way
        report: MigrationReport = await real["migrate_domain"](inp)
        return report

    @activity.defn(name="start_domain")
    def start_domain(ref: DomainRef) -> DomainReport:
        while not the_rig.starts_open.wait(0.05):
            activity.heartbeat()
        report: DomainReport = real["start_domain"](ref)
        return report

    @activity.defn(name="begin_maintenance")
    def begin_maintenance(inp: HostNameInput) -> BeginMaintenanceResult:
        time.sleep(the_rig.enter_delay)
        result: BeginMaintenanceResult = real["begin_maintenance"](inp)
        return result

    @activity.defn(name="shutdown_domain")
    def shutdown_domain(ref: DomainRef) -> DomainReport:
        """A guest that ignores ACPI (a SeaBIOS guest does): asked, it keeps running."""
        return DomainReport(name=ref.name, host=ref.host, state=VmState.RUNNING, changed=False,
                            detail="graceful shutdown requested")

    lines = OrderingActivities(db, temporal_env.client, own)

    @activity.defn(name="claim_resources")
    async def claim_resources(inp: ClaimInput) -> ClaimResult:
        if the_rig.claim_delay:
            the_rig.claiming.set()
            await asyncio.sleep(the_rig.claim_delay)
        return await lines.claim_resources(inp)

    replaced = [migrate_domain, start_domain, shutdown_domain, begin_maintenance]
    names = {getattr(a, "__temporal_activity_definition").name for a in replaced}
    with ThreadPoolExecutor(max_workers=16) as executor:
        async with Worker(temporal_env.client, task_queue=own.task_queue,
                          workflows=TASK_WORKFLOWS, workflow_runner=WORKFLOW_RUNNER,
                          activities=[*(a for a in acts if getattr(a, "__name__", "") not in
                                        names), *replaced],
                          activity_executor=executor,
                          max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE), \
                Worker(temporal_env.client, task_queue=ordering_queue(own.task_queue),
                       activities=[claim_resources, lines.release_resources,
                                   lines.await_task_end]):
            yield the_rig
            the_rig.moves_open.set()
            the_rig.starts_open.set()


# --- case 1: a clear-host cancelled mid-moves ---------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.2])
async def test_cancelled_clear_host_leaves_every_vm_on_one_host(
        client: TaskomaticClient, lab: Lab, db: Database, delay: float) -> None:
    src, dst = lab.host(1, vcpus=16, memory_mib=16384), lab.host(2, vcpus=16, memory_mib=16384)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 14, "c")
        clear = await client.clear_host(ClearHostRequest(host=src.name),
                                        task_id=f"ClearHost-cancelled-{lab.prefix}")
        await asyncio.sleep(delay)
        await client.cancel(clear.id)
        await ends_cancelled(clear)
    children = [child_task_id(clear.id, "migrate", name) for name in names]
    assert await still_running(client, [clear.id, *children]) == []
    assert_consistent(lab, db, names)
    await assert_replays(client, [clear.id, *await cancelled_among(client, children)],
                         record=delay == 0.7)
    host = inventory.get_host(db, src.name)
    assert host is not None and host.state == HostState.MAINTENANCE_FAILED


async def test_cancelled_restore_host_leaves_every_vm_on_one_host(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    src, dst = lab.host(1, vcpus=16, memory_mib=16384), lab.host(2, vcpus=16, memory_mib=16384)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 14, "r")
        await client.host_result(await client.clear_host(ClearHostRequest(host=src.name)))
        await client.host_result(await client.activate_host(ActivateHostRequest(host=src.name)))
        restore = await client.restore_host(RestoreHostRequest(host=src.name))
        await asyncio.sleep(0.7)
        await client.cancel(restore.id)
        await ends_cancelled(restore)
    children = [child_task_id(restore.id, "migrate", name) for name in names]
    assert await still_running(client, [restore.id, *children]) == []
    assert await cancelled_among(client, children), "the cancel came after the last move"
    assert_consistent(lab, db, names)
    await assert_replays(client, [restore.id], record=False)


# --- case 2, the workflow side: a cancelled move is awaited to its end --------------------------


async def test_cancel_waits_for_a_move_that_completes_anyway(rig: Rig, lab: Lab,
                                                             db: Database) -> None:
    """The migrate step hears of the cancel, but the move ends moved (the abort came too late):
    the undo runs only then, and records the VM where it now is."""
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        [name] = await fill(rig.client, lab, src, 1, "late")
        rig.moves_open.clear()
        rig.finish_cancelled_moves = True
        move = await rig.client.migrate_vm(MigrateVmRequest(name=name, to=dst.name),
                                           task_id=f"MigrateVm-cancelled-{lab.prefix}")
        await until(lambda: _true(name in rig.migrating), "the migration to start")
        await rig.client.cancel(move.id)
        await ends_cancelled(move)
        await assert_replays(rig.client, [move.id])
    progress = await move.progress()
    assert progress is not None
    steps = {s.name: s for s in progress.steps}
    assert steps[f"migrate to {dst.name}"].state == "done"
    assert steps["confirm where the VM runs"].state == "compensated"
    assert lab.domains(dst) == {name: True} and lab.domains(src) == {}
    assert_consistent(lab, db, [name])


async def _true(value: bool) -> bool:
    return value


# --- case 3: a cancel while a task waits --------------------------------------------------------


async def test_cancel_while_waiting_for_prerequisites(rig: Rig, lab: Lab, db: Database) -> None:
    host = lab.host(1)
    with only_hosts_up(db, [host.name]):
        a, b = await fill(rig.client, lab, host, 2, "pre")
        first = await rig.client.stop_vm(StopVmRequest(name=a, timeout_seconds=60),
                                         task_id=f"StopVm-cancelled-shutoff-{lab.prefix}")
        await at_step(first, "wait for shutoff")  # the guest ignores the request
        then = await rig.client.stop_vm(StopVmRequest(name=b, force=True, after=[first.id]),
                                        task_id=f"StopVm-cancelled-after-{lab.prefix}")
        await in_state(then, "waiting")
        await rig.client.cancel(then.id)
        await ends_cancelled(then)
        await rig.client.cancel(first.id)
        await ends_cancelled(first, within=20)  # the wait for shutoff hears of it
        await assert_replays(rig.client, [then.id, first.id])
    assert lab.domains(host) == {a: True, b: True}
    assert_consistent(lab, db, [a, b])


async def test_cancel_while_waiting_in_line(rig: Rig, lab: Lab, db: Database) -> None:
    host = lab.host(1)
    with only_hosts_up(db, [host.name]):
        [a] = await fill(rig.client, lab, host, 1, "line")
        holder = await rig.client.stop_vm(StopVmRequest(name=a, timeout_seconds=60))
        await at_step(holder, "wait for shutoff")
        doomed = await rig.client.start_vm(StartVmRequest(name=a))
        behind = await rig.client.stop_vm(StopVmRequest(name=a, force=True))
        await in_state(behind, "waiting")
        await rig.client.cancel(doomed.id)
        await ends_cancelled(doomed)
        assert ordering.queue(db, [doomed.id]) == []
        await rig.client.cancel(holder.id)
        await ends_cancelled(holder, within=20)
        assert (await behind.result()).state == VmState.SHUTOFF  # the line moved on
    assert_consistent(lab, db, [a])


async def test_cancel_while_claiming_a_place_in_line(rig: Rig, lab: Lab, db: Database) -> None:
    """The cancel meets the task inside its claim (a database transaction on its way): the claim
    ends first, then the task gives its place back."""
    host = lab.host(1)
    with only_hosts_up(db, [host.name]):
        [a] = await fill(rig.client, lab, host, 1, "claim")
        holder = await rig.client.stop_vm(StopVmRequest(name=a, timeout_seconds=60))
        await at_step(holder, "wait for shutoff")
        rig.claim_delay = 2.0
        doomed = await rig.client.stop_vm(StopVmRequest(name=a, force=True))
        await until(lambda: _true(rig.claiming.is_set()), "the claim to start")
        await rig.client.cancel(doomed.id)
        await ends_cancelled(doomed)
        await asyncio.sleep(rig.claim_delay)  # the claim is long over
        assert ordering.queue(db, [doomed.id]) == []
        rig.claim_delay = 0.0
        await rig.client.cancel(holder.id)
        await ends_cancelled(holder, within=20)
    assert_consistent(lab, db, [a])


async def test_cancel_while_waiting_for_migration_slots(rig: Rig, lab: Lab,
                                                        db: Database) -> None:
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        a, b = await fill(rig.client, lab, src, 2, "slot")
        rig.moves_open.clear()
        first = await rig.client.migrate_vm(MigrateVmRequest(name=a, to=dst.name))
        await until(lambda: _true(a in rig.migrating), "the first migration to start")
        second = await rig.client.migrate_vm(MigrateVmRequest(name=b, to=dst.name),
                                             task_id=f"MigrateVm-cancelled-slots-{lab.prefix}")
        await at_step(second, "wait for migration slots")  # the cluster's one slot is taken
        await rig.client.cancel(second.id)
        await ends_cancelled(second)
        await assert_replays(rig.client, [second.id])
        assert b not in rig.migrating and reservations(db, b) == []
        rig.moves_open.set()
        assert (await first.result()).host == dst.name
    assert lab.domains(src) == {b: True} and lab.domains(dst) == {a: True}
    assert_consistent(lab, db, [a, b])


async def test_cancel_while_clear_host_waits_for_tasks_placed_before(
        rig: Rig, lab: Lab, db: Database) -> None:
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        [old] = await fill(rig.client, lab, src, 1, "old")
        rig.starts_open.clear()
        late = lab.vm_name("late")  # placed on src before maintenance, still starting
        create = await rig.client.create_vm(CreateVmRequest(name=late, host=src.name,
                                                            start=True, memory_mib=256))
        await until(lambda: _true(late in reservations(db, late)), "the create to reserve")
        clear = await rig.client.clear_host(ClearHostRequest(host=src.name),
                                            task_id=f"ClearHost-cancelled-waiting-{lab.prefix}")
        await at_step(clear, "wait for tasks placed before maintenance")
        await rig.client.cancel(clear.id)
        await ends_cancelled(clear)
        await assert_replays(rig.client, [clear.id])
        assert ordering.queue(db, [clear.id]) == []
        host = inventory.get_host(db, src.name)
        assert host is not None and host.state == HostState.MAINTENANCE_FAILED
        rig.starts_open.set()
        assert (await create.result()).host == src.name
    assert lab.domains(src) == {old: True, late: True} and lab.domains(dst) == {}
    assert_consistent(lab, db, [old, late])


async def test_cancel_while_entering_maintenance(rig: Rig, lab: Lab, db: Database) -> None:
    """The cancel meets the clear inside its first step: the host enters maintenance all the
    same (the transaction ends), so the clear's undo marks it failed, as a later cancel does."""
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        [a] = await fill(rig.client, lab, src, 1, "enter")
        rig.enter_delay = 1.5
        clear = await rig.client.clear_host(ClearHostRequest(host=src.name))
        await at_step(clear, "enter maintenance")
        await rig.client.cancel(clear.id)
        await ends_cancelled(clear)
        await asyncio.sleep(rig.enter_delay)  # the step is over, whoever waited for it
    host = inventory.get_host(db, src.name)
    assert host is not None and host.state == HostState.MAINTENANCE_FAILED
    assert lab.domains(src) == {a: True} and lab.domains(dst) == {}
    assert_consistent(lab, db, [a])


# --- case 4: a cancel while clear-host stops what it could not move -----------------------------


async def test_cancel_stops_a_clear_host_stopping_unmigratable_vms(
        rig: Rig, lab: Lab, db: Database) -> None:
    src, dst = lab.host(1), lab.host(2, vcpus=2)
    with only_hosts_up(db, [src.name, dst.name]):
        big = await fill(rig.client, lab, src, 2, "big", vcpus=4)  # no room for them on dst
        clear = await rig.client.clear_host(ClearHostRequest(
            host=src.name, stop_unmigratable=True, stop_timeout_seconds=30),
            task_id=f"ClearHost-cancelled-stopping-{lab.prefix}")
        stop = rig.client.task(child_task_id(clear.id, "stop", big[0]), "StopVm")
        await until(lambda: task_exists(rig.client, stop.id), "the first stop to start")
        await at_step(stop, "wait for shutoff")  # the guest ignores the request
        await rig.client.cancel(clear.id)
        await ends_cancelled(clear, within=20)
    await ends_cancelled(stop)
    later = child_task_id(clear.id, "stop", big[1])
    assert not await task_exists(rig.client, later), "the clear went on to the next VM"
    assert await still_running(rig.client, [clear.id, stop.id]) == []
    assert lab.domains(src) == {big[0]: True, big[1]: True}
    assert_consistent(lab, db, big)
    await assert_replays(rig.client, [clear.id, stop.id])


async def task_exists(client: TaskomaticClient, task_id: str) -> bool:
    try:
        await client.temporal.get_workflow_handle(task_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
