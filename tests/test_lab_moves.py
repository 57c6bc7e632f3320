"""MigrateVm and ClearHost on the lab's real libvirtd hosts (QEMU TCG guests, live migration).

- a Linux guest migrated by the task keeps running: its own tick counter continues, no gap;
- a migration whose link is cut stalls; the task's progress timeout aborts it, the guest stays
  on its source and keeps counting, and the task reports ``MigrationStalled``;
- a host is cleared while creates and starts race it; activate and restore bring VMs back;
- the worker (a subprocess) is killed with SIGKILL mid clear-host and replaced.

See lab_fixtures.py for the lab; tests/test_clear_host.py runs the same tasks on test-driver
hosts (cold moves) with finer-grained checks of slots and batches.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest
from helpers import force_host_state
from lab_fixtures import QemuLab
from temporalio.testing import WorkflowEnvironment
from test_clear_host import fill, placement, state
from test_migration import reservations

from lab.models import LabHost
from starter.client import TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreateVmRequest,
    HostState,
    HostTaskResult,
    MigrateVmRequest,
    MigrationLimits,
    RestoreHostRequest,
    StartVmRequest,
)
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

SEABIOS_MIB = 64


async def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``check`` (run in a thread: it may call libvirt) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


def _processed(qemu_lab: QemuLab, host: LabHost, name: str) -> int:
    """Bytes the migration job of ``name`` on ``host`` has sent so far (0: no job)."""
    try:
        stats = qemu_lab.conn(host).lookupByName(name).jobStats()
    except libvirt.libvirtError:
        return 0
    return int(stats.get("data_processed", 0))


def _counted_without_gaps(ticks: list[tuple[int, float]]) -> bool:
    """One guest, one counter: every tick once and in order, uptime always rising."""
    return ([n for n, _ in ticks] == list(range(1, len(ticks) + 1))
            and all(a < b for (_, a), (_, b) in itertools.pairwise(ticks)))


async def test_a_linux_guest_migrated_by_the_task_keeps_running(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    guest = qemu_lab.start_linux_guest(source, "live", record=True)
    before, _ = await asyncio.to_thread(guest.wait_for_tick, 1)  # booted and counting

    handle = await client.migrate_vm(MigrateVmRequest(name=guest.name, to=dest.name))
    result = await handle.result()
    assert (result.host, result.state) == (dest.name, "running")
    assert any(note.startswith("live") for note in result.notes), result.notes

    assert qemu_lab.domains(source) == {}
    assert qemu_lab.domains(dest) == {guest.name: True}
    assert qemu_lab.conn(dest).lookupByName(guest.name).isPersistent()
    await asyncio.to_thread(guest.wait_for_tick, before + 3)  # counting on dest
    assert _counted_without_gaps(guest.ticks())
    vm = inventory.get_vm(db, guest.name)
    assert vm is not None and vm.vm.host == dest.name and vm.vm.origin_host is None
    progress = await handle.progress()
    assert progress is not None and progress.percent == 100.0
    assert reservations(db, qemu_lab.vm_name("")) == []


async def test_a_stalled_migration_is_aborted_and_the_vm_stays_on_its_source(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    guest = qemu_lab.start_linux_guest(source, "stall", record=True)
    await asyncio.to_thread(guest.wait_for_tick, 1)

    limits = MigrationLimits(bandwidth_mib_s=1, progress_timeout_seconds=4)
    handle = await client.migrate_vm(MigrateVmRequest(name=guest.name, to=dest.name,
                                                      limits=limits))
    await _until("the migration moves data",
                 lambda: _processed(qemu_lab, source, guest.name) > 0)
    await asyncio.to_thread(qemu_lab.cut_link, dest)
    with pytest.raises(TaskError) as failed:
        await asyncio.wait_for(handle.result(), 120)

    failure = failed.value.failure
    assert failure.error_type == "MigrationStalled", failure
    assert (failure.vm, failure.step) == (guest.name, f"migrate to {dest.name}")
    assert "release destination" in failure.compensated
    assert failure.compensation_failed == []
    assert qemu_lab.domains(source) == {guest.name: True}
    assert qemu_lab.domains(dest) == {}
    last = guest.ticks()[-1][0]
    await asyncio.to_thread(guest.wait_for_tick, last + 2)  # still counting, on the source
    assert _counted_without_gaps(guest.ticks())
    vm = inventory.get_vm(db, guest.name)
    assert vm is not None and vm.vm.host == source.name
    assert reservations(db, qemu_lab.vm_name("")) == []


async def test_clear_a_lab_host_while_creates_and_starts_race_it(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    src, parking = qemu_lab.host(1), qemu_lab.host(2)
    on_src = await _fill(client, qemu_lab, src, 10, "src")
    parked = await _fill(client, qemu_lab, parking, 6, "parked", start=False)

    clear = await client.clear_host(ClearHostRequest(host=src.name, batch=4))
    racing = [await client.create_vm(CreateVmRequest(
        name=qemu_lab.vm_name(f"new{i}"), memory_mib=SEABIOS_MIB, start=True))
        for i in range(14)]
    racing += [await client.start_vm(StartVmRequest(name=n)) for n in parked]
    result = await client.host_result(clear)
    raced = await asyncio.gather(*(h.result() for h in racing))

    assert result.state == HostState.MAINTENANCE and result.failed == []
    assert sorted(o.vm for o in result.outcomes) == sorted(on_src)
    assert all(r.host != src.name and r.state == "running" for r in raced)
    seen = placement(qemu_lab, db)  # exactly once in libvirt and inventory, none over capacity
    assert qemu_lab.domains(src) == {}
    assert set(seen) == set(on_src) | set(parked) | {r.vm for r in raced}
    assert all(running for h in qemu_lab.hosts for running in qemu_lab.domains(h).values())
    assert reservations(db, qemu_lab.vm_name("")) == []

    # Back in service, then every VM that came from it goes home.
    await (await client.activate_host(ActivateHostRequest(host=src.name))).result()
    assert state(db, src.name) == HostState.UP
    restored: HostTaskResult = await client.host_result(
        await client.restore_host(RestoreHostRequest(host=src.name)))
    assert restored.failed == [] and sorted(o.vm for o in restored.outcomes) == sorted(on_src)
    assert set(qemu_lab.domains(src)) == set(on_src)
    placement(qemu_lab, db)
    assert reservations(db, qemu_lab.vm_name("")) == []


async def _fill(client: TaskomaticClient, qemu_lab: QemuLab, host: LabHost, count: int,
                label: str, start: bool = True) -> list[str]:
    return await fill(client, qemu_lab, host, count, label, start=start,
                      memory_mib=SEABIOS_MIB)


# --- a worker in a process of its own, killed with SIGKILL ----------------------------------


@contextmanager
def _worker_process(settings: Settings, log: Path) -> Iterator[Callable[[], None]]:
    """Run ``worker.py`` in a subprocess for ``settings``' queue; yields a function that kills
    it with SIGKILL and starts a new one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_TEMPORAL_ADDRESS=settings.temporal_address,
               TASKOMATIC_TASK_QUEUE=settings.task_queue,
               TASKOMATIC_DATABASE_URL=settings.database_url,
               TASKOMATIC_MIGRATION_SAVE_DIR=str(settings.migration_save_dir),
               TASKOMATIC_DEV_ENCRYPTION="false", TASKOMATIC_LOG_FORMAT="json")
    worker_py = Path(__file__).resolve().parent.parent / "worker.py"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        with log.open("ab") as out:
            procs.append(subprocess.Popen([sys.executable, str(worker_py)], env=env,
                                          cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    def replace() -> None:
        os.killpg(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait(timeout=30)
        start()

    start()
    try:
        yield replace
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)


@pytest.fixture
async def process_client(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
                         tmp_path: Path) -> AsyncIterator[tuple[TaskomaticClient,
                                                                Callable[[], None]]]:
    own = settings.model_copy(update={
        "task_queue": f"killed-{uuid.uuid4().hex[:6]}",
        "temporal_address": temporal_env.client.service_client.config.target_host})
    with _worker_process(own, tmp_path / "worker.log") as replace:
        yield TaskomaticClient(temporal_env.client, own, db), replace


async def test_worker_killed_mid_clear_host_then_replaced(
        process_client: tuple[TaskomaticClient, Callable[[], None]], qemu_lab: QemuLab,
        db: Database) -> None:
    client, replace_worker = process_client
    src, dst = qemu_lab.host(1), qemu_lab.host(2)
    for host in qemu_lab.hosts[2:]:  # one destination: every move lands on dst
        force_host_state(db, host.name, HostState.DOWN)
    names = await asyncio.wait_for(_fill(client, qemu_lab, src, 8, "kill"), 120)
    clear = await client.clear_host(ClearHostRequest(host=src.name, batch=3))

    async def moved() -> int:
        view = await client.host_moves(clear.id)
        return view.moved if view is not None else 0

    for _ in range(600):
        if await moved() >= 2:
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(replace_worker)  # SIGKILL mid-clear, then a fresh worker
    moved_at_kill = len(qemu_lab.domains(dst))
    assert 0 < moved_at_kill < len(names)

    result = await asyncio.wait_for(client.host_result(clear), 300)
    assert result.state == HostState.MAINTENANCE and result.failed == []
    assert sorted(o.vm for o in result.outcomes) == sorted(names)  # each exactly once
    assert qemu_lab.domains(src) == {}
    assert qemu_lab.domains(dst) == dict.fromkeys(names, True)
    placement(qemu_lab, db)
    assert reservations(db, qemu_lab.vm_name("")) == []
