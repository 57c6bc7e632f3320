"""On the lab's real libvirtd hosts: a hypervisor that hangs (its libvirtd SIGSTOPped) is
isolated. With 70 tasks queued for it, a create on another host completes in seconds; the host
becomes non_responsive and its VM unknown with the host's reason; after SIGCONT it is up again,
its VM's state is libvirt's again, every task has ended and nothing is orphaned (no domain or
pool without an inventory row, no reservation left). The worker is the real entry point
(``python -P -m worker``), with its host monitor and libvirt event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import libvirt
import pytest
from lab_fixtures import QemuLab
from temporalio.testing import WorkflowEnvironment
from test_clear_host import placement
from test_migration import reservations
from worker_procs import WorkerProcesses, worker_fleet

from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.inventory.storage import remove_pool
from taskomatic.models import CreatePoolRequest, CreateVmRequest, HostState, VmState
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

POOL_ROOT = Path("/var/lib/taskomatic/pools")  # the worker's default pool root
QUEUED = 70


async def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        assert time.monotonic() - started < timeout, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
async def worker_process(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
                         tmp_path: Path, qemu_lab: QemuLab
                         ) -> AsyncIterator[tuple[TaskomaticClient, WorkerProcesses]]:
    for host in qemu_lab.hosts:  # a fresh libvirtd's first connection probes QEMU (seconds)
        qemu_lab.conn(host).getLibVersion()
    with worker_fleet(settings, temporal_env, db, tmp_path, "hang",
                      HOST_UNRESPONSIVE_SECONDS="15", HOST_CHECK_INTERVAL_SECONDS="1") as fleet:
        yield fleet


def _state(db: Database, vm: str) -> tuple[VmState, str | None]:
    found = inventory.get_vm(db, vm)
    assert found is not None
    return found.vm.state, found.vm.state_reason


def _host_state(db: Database, host: str) -> HostState:
    found = inventory.get_host(db, host)
    assert found is not None
    return found.state


async def test_a_hung_host_is_isolated_and_nothing_is_orphaned(
        worker_process: tuple[TaskomaticClient, WorkerProcesses], qemu_lab: QemuLab,
        db: Database) -> None:
    client, procs = worker_process
    hung, other = qemu_lab.host(1), qemu_lab.host(2)
    assert hung.pid is not None
    before = qemu_lab.vm_name("before")
    await asyncio.wait_for((await client.create_vm(CreateVmRequest(
        name=before, host=hung.name, memory_mib=64, start=True))).result(), 120)
    pools = [f"hang-{qemu_lab.prefix}-{i}" for i in range(QUEUED)]
    os.kill(hung.pid, signal.SIGSTOP)  # 70 submissions take seconds: all land while it is up
    try:
        queued = [await client.create_pool(CreatePoolRequest(
            name=name, host=hung.name, path=str(POOL_ROOT / name))) for name in pools]
        started = time.monotonic()
        elsewhere = qemu_lab.vm_name("elsewhere")
        made = await asyncio.wait_for((await client.create_vm(CreateVmRequest(
            name=elsewhere, host=other.name, memory_mib=64, start=True))).result(), 60)
        took = time.monotonic() - started
        assert (made.host, made.state) == (other.name, "running"), procs.logs()
        print(f"create on another host with {QUEUED} tasks queued for a hung one: {took:.1f} s")

        marked = await _until("the hung host is non_responsive", lambda: _host_state(
            db, hung.name) is HostState.NON_RESPONSIVE, 60)
        print(f"hung host non_responsive after {marked:.1f} s more")
        state, reason = _state(db, before)
        assert state is VmState.UNKNOWN and reason is not None and hung.name in reason
        with pytest.raises(RequestError) as refused:  # new work for it is refused at the door
            await client.create_pool(CreatePoolRequest(
                name=f"{pools[0]}-late", host=hung.name, path=str(POOL_ROOT / "late")))
        assert refused.value.field == "host" and "non_responsive" in refused.value.reason
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    await _until("the host is up again", lambda: _host_state(db, hung.name) is HostState.UP, 60)
    await _until("its VM's state is libvirt's again",
                 lambda: _state(db, before) == (VmState.RUNNING, None), 30)
    outcomes: dict[str, int] = {}
    for handle in queued:
        try:
            await asyncio.wait_for(handle.result(), 240)
            outcomes["complete"] = outcomes.get("complete", 0) + 1
        except TaskError as err:
            kind = str(err.failure.error_type)
            outcomes[kind] = outcomes.get(kind, 0) + 1
    print(f"the {QUEUED} queued tasks: {outcomes}")
    try:
        placement(qemu_lab, db)  # every domain has its row, on the right host, and back
        assert reservations(db, qemu_lab.vm_name("")) == []
        recorded = {p.name: p for p in inventory.list_pools(db, hung.name) if p.name in pools}
        defined = {p.name(): p for p in qemu_lab.conn(hung).listAllStoragePools()
                   if p.name() in pools}
        assert set(defined) == set(recorded), procs.logs()
        assert all(p.state == "active" for p in recorded.values())  # none left 'creating'
        assert outcomes.get("complete", 0) == len(recorded)
    finally:
        _drop_pools(qemu_lab, db, hung, pools)


def _drop_pools(qemu_lab: QemuLab, db: Database, host: object, pools: list[str]) -> None:
    conn = qemu_lab.conn(host)  # type: ignore[arg-type]
    for pool in conn.listAllStoragePools():
        if pool.name() in pools:
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
    for name in pools:
        remove_pool(db, name)
        shutil.rmtree(POOL_ROOT / name, ignore_errors=True)


async def test_lab_events_reach_the_inventory_within_2_s(
        worker_process: tuple[TaskomaticClient, WorkerProcesses], qemu_lab: QemuLab,
        db: Database) -> None:
    client, _ = worker_process
    host = qemu_lab.host(2)
    name = qemu_lab.vm_name("evented")
    await asyncio.wait_for((await client.create_vm(CreateVmRequest(
        name=name, host=host.name, memory_mib=64, start=True))).result(), 120)
    # The worker subscribes on the primary connection its host monitor opens at its first
    # probe: three probe rounds (TASKOMATIC_HOST_CHECK_INTERVAL_SECONDS=1) are plenty.
    await asyncio.sleep(3)
    dom = qemu_lab.conn(host).lookupByName(name)
    for change, expected in (("suspend", VmState.PAUSED), ("resume", VmState.RUNNING),
                             ("destroy", VmState.SHUTOFF), ("create", VmState.RUNNING)):
        getattr(dom, change)()  # behind taskomatic's back, as `virsh suspend` would
        took = await _until(f"{change} recorded", lambda e=expected: _state(  # type: ignore[misc]
            db, name)[0] is e, 2.0)
        print(f"{change}: recorded after {took * 1000:.0f} ms")
