"""ClearHost, ActivateHost and RestoreHost on libvirt test-driver hosts (cold moves), with real
Temporal and PostgreSQL; creates and starts race the clear, and a worker dies in the middle."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from helpers import only_hosts_up
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from test_migration import reservations

from conftest import Lab
from starter.client import TaskError, TaskHandle, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreateVmRequest,
    DomainRef,
    DomainReport,
    HostState,
    HostTaskResult,
    MigrateDomainInput,
    MigrateVmRequest,
    MigrationReport,
    RestoreHostRequest,
    StartVmRequest,
)
from taskomatic.settings import Settings
from worker import TASK_WORKFLOWS as WORKFLOWS
from worker import activity_list, build_ordering_worker

pytestmark = pytest.mark.asyncio


class Hosts(Protocol):
    """Hosts a test placed VMs on: test-driver hosts (``Lab``) or the lab's (``QemuLab``)."""

    @property
    def hosts(self) -> Sequence[Any]: ...

    def vm_name(self, label: str) -> str: ...

    def domains(self, host: Any) -> dict[str, bool]: ...


async def fill(client: TaskomaticClient, lab: Hosts, host: Any, count: int, label: str,
               start: bool = True, vcpus: int = 1, memory_mib: int = 256) -> list[str]:
    names = [lab.vm_name(f"{label}{i}") for i in range(count)]
    handles = [await client.create_vm(CreateVmRequest(name=n, host=host.name, start=start,
                                                      vcpus=vcpus, memory_mib=memory_mib))
               for n in names]
    await asyncio.gather(*(h.result() for h in handles))
    return names


def placement(lab: Hosts, db: Database) -> dict[str, list[str]]:
    """VM → hosts libvirt has it on, for every lab VM; checked against the inventory."""
    seen: dict[str, list[str]] = {}
    for host in lab.hosts:
        for name in lab.domains(host):
            seen.setdefault(name, []).append(host.name)
    for name, hosts in seen.items():
        vm = inventory.get_vm(db, name)
        assert vm is not None, f"{name} in libvirt on {hosts} but not in the inventory"
        assert hosts == [vm.vm.host], f"{name}: libvirt {hosts}, inventory {vm.vm.host}"
    lab_hosts = {h.name for h in lab.hosts}
    recorded = {vm.name for vm in inventory.list_vms(db) if vm.host in lab_hosts}
    assert recorded == set(seen), f"inventory only: {recorded - set(seen)}"
    for host in lab.hosts:
        h = inventory.get_host(db, host.name)
        assert h is not None
        assert h.used_vcpus + h.reserved_vcpus <= h.vcpus, f"{host.name} over its vCPUs"
        assert h.used_memory_mib + h.reserved_memory_mib <= h.memory_mib, f"{host.name} memory"
    return seen


async def host_result(client: TaskomaticClient, handle: TaskHandle) -> HostTaskResult:
    return await client.host_result(handle)


def state(db: Database, host: str) -> HostState:
    h = inventory.get_host(db, host)
    assert h is not None
    return h.state


async def test_clear_host_while_creates_and_starts_race_it(client: TaskomaticClient, lab: Lab,
                                                           db: Database) -> None:
    src = lab.host(1, vcpus=16, memory_mib=16384)
    others = [lab.host(i, vcpus=16, memory_mib=16384) for i in (2, 3, 4)]
    with only_hosts_up(db, [h.name for h in lab.hosts]):
        on_src = await fill(client, lab, src, 12, "src")
        parked = await fill(client, lab, others[0], 6, "parked", start=False)
        clear = await client.clear_host(ClearHostRequest(host=src.name, batch=5))
        racing = [await client.create_vm(CreateVmRequest(name=lab.vm_name(f"new{i}"),
                                                         memory_mib=256, start=True))
                  for i in range(14)]
        racing += [await client.start_vm(StartVmRequest(name=n)) for n in parked]
        result = await host_result(client, clear)
        created = await asyncio.gather(*(h.result() for h in racing))
    assert result.state == HostState.MAINTENANCE and result.failed == []
    assert sorted(o.vm for o in result.outcomes) == sorted(on_src)
    assert result.runs == 3  # 12 VMs, 5 per run: the history restarted twice
    assert all(res.host != src.name for res in created)
    seen = placement(lab, db)
    assert not [n for n, hosts in seen.items() if src.name in hosts]
    assert set(on_src) | set(parked) | {r.vm for r in created} == set(seen)
    assert reservations(db) == []
    assert state(db, src.name) == HostState.MAINTENANCE
    for name in on_src:
        vm = inventory.get_vm(db, name)
        assert vm is not None and vm.vm.origin_host == src.name and vm.vm.state == "running"


async def test_dry_run_plans_without_changing_anything(client: TaskomaticClient, lab: Lab,
                                                       db: Database) -> None:
    src, dst = lab.host(1), lab.host(2, vcpus=2, memory_mib=8192)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 3, "dry")
        before = placement(lab, db)
        result = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name, dry_run=True)))
        assert result.dry_run and result.state == HostState.UP
        plan = {m.vm: m for m in result.plan}
        assert sorted(plan) == sorted(names)
        assert [plan[n].destination for n in names] == [dst.name, dst.name, None]
        reason = plan[names[2]].reason or ""
        assert reason.startswith(f"no host can take it: {dst.name}: lacks room (0 vCPUs /")
        assert reason.endswith("(has_room)") or "(has_room);" in reason
        assert placement(lab, db) == before
        assert state(db, src.name) == HostState.UP and reservations(db) == []


async def test_unmigratable_vm_is_reported_then_stopped(client: TaskomaticClient, lab: Lab,
                                                        db: Database) -> None:
    src, dst = lab.host(1), lab.host(2, vcpus=2)
    with only_hosts_up(db, [src.name, dst.name]):
        small = await fill(client, lab, src, 2, "small")
        big = await fill(client, lab, src, 1, "big", vcpus=4)
        first = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name)))
        assert first.state == HostState.MAINTENANCE_FAILED
        assert [(o.vm, o.outcome) for o in first.failed] == [(big[0], "failed")]
        assert "lacks room" in (first.failed[0].reason or "")
        assert state(db, src.name) == HostState.MAINTENANCE_FAILED
        assert lab.domains(src) == {big[0]: True}
        assert {n for n, h in placement(lab, db).items() if h == [dst.name]} == set(small)

        again = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name, stop_unmigratable=True)))
    assert again.state == HostState.MAINTENANCE
    assert [(o.vm, o.outcome) for o in again.outcomes] == [(big[0], "stopped")]
    assert lab.domains(src) == {big[0]: False}
    vm = inventory.get_vm(db, big[0])
    assert vm is not None and vm.vm.state == "shutoff"
    assert reservations(db) == []


async def test_activate_then_restore_brings_vms_back(client: TaskomaticClient, lab: Lab,
                                                     db: Database) -> None:
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 4, "home")
        cleared = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name)))
        assert cleared.state == HostState.MAINTENANCE and lab.domains(src) == {}
        activated = await host_result(client, await client.activate_host(ActivateHostRequest(
            host=src.name)))
        assert activated.state == HostState.UP
        for name in names:  # origins are kept while the host is back in service
            vm = inventory.get_vm(db, name)
            assert vm is not None and (vm.vm.host, vm.vm.origin_host) == (dst.name, src.name)
        restored = await host_result(client, await client.restore_host(RestoreHostRequest(
            host=src.name)))
    assert sorted(o.vm for o in restored.outcomes if o.outcome == "moved") == sorted(names)
    assert set(lab.domains(src)) == set(names) and lab.domains(dst) == {}
    for name in names:
        vm = inventory.get_vm(db, name)
        assert vm is not None and (vm.vm.host, vm.vm.origin_host) == (src.name, None)
    placement(lab, db)
    assert reservations(db) == []


# --- a worker of our own: slow migrations, concurrency counted, killed mid-clear ---------------


@dataclass
class Meter:
    delay: float
    starts_open: threading.Event = field(default_factory=threading.Event)
    running: int = 0
    peak: int = 0
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class OwnWorker:
    client: TaskomaticClient
    meter: Meter
    start: Callable[[], Any]
    stop: Callable[[], Any]


@pytest.fixture
async def own_worker(temporal_env: WorkflowEnvironment, settings: Settings,
                     hypervisors: Hypervisors, db: Database) -> AsyncIterator[OwnWorker]:
    # Migration slots across all tasks on this queue: 2 out and 4 in per host, 3 in the cluster.
    queue = settings.model_copy(update={"task_queue": f"clear-{uuid.uuid4().hex[:6]}",
                                        "migrations_in_per_host": 4,
                                        "migrations_in_cluster": 3})
    meter = Meter(delay=0.4)
    acts = list(activity_list(queue, hypervisors, temporal_env.client))
    real = next(a for a in acts if getattr(a, "__name__", "") == "migrate_domain")

    @activity.defn(name="migrate_domain")
    async def migrate_domain(inp: MigrateDomainInput) -> MigrationReport:
        """The real migration, made to take a while so that moves overlap."""
        with meter.lock:
            meter.running += 1
            meter.peak = max(meter.peak, meter.running)
            meter.calls.append(inp.name)
        try:
            for _ in range(int(meter.delay / 0.05)):  # heartbeats deliver a cancellation
                activity.heartbeat()
                await asyncio.sleep(0.05)
            report: MigrationReport = await real(inp)
            return report
        finally:
            with meter.lock:
                meter.running -= 1

    real_start = next(a for a in acts if getattr(a, "__name__", "") == "start_domain")
    meter.starts_open.set()

    @activity.defn(name="start_domain")
    def start_domain(ref: DomainRef) -> DomainReport:
        """The real start, held while the test keeps ``starts_open`` cleared."""
        while not meter.starts_open.wait(0.05):
            activity.heartbeat()
        report: DomainReport = real_start(ref)
        return report

    acts = [a for a in acts if getattr(a, "__name__", "") not in ("migrate_domain",
                                                                   "start_domain")]
    executor = ThreadPoolExecutor(max_workers=16)
    current: list[Worker] = []
    runs: list[asyncio.Future[None]] = []

    async def start() -> None:
        w = Worker(temporal_env.client, task_queue=queue.task_queue, workflows=WORKFLOWS,
                   activities=[*acts, migrate_domain, start_domain],
                   activity_executor=executor,
                   max_cached_workflows=0)
        current.append(w)
        runs.append(asyncio.ensure_future(w.run()))
        await asyncio.sleep(0.1)

    async def stop() -> None:
        await current.pop().shutdown()

    await start()
    try:
        async with build_ordering_worker(temporal_env.client, queue):
            yield OwnWorker(TaskomaticClient(temporal_env.client, queue, db), meter, start,
                            stop)
    finally:
        while current:
            await stop()
        executor.shutdown(wait=False)


async def test_clear_host_bounds_its_migrations_in_flight(own_worker: OwnWorker, lab: Lab,
                                                          db: Database) -> None:
    client = own_worker.client
    src, dst = lab.host(1, vcpus=16, memory_mib=16384), lab.host(2, vcpus=16, memory_mib=16384)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 9, "bound")
        clear = await client.clear_host(ClearHostRequest(host=src.name, parallel=3, batch=4))
        views = []
        waiter = asyncio.ensure_future(host_result(client, clear))
        while not waiter.done():
            views.append(await client.host_moves(clear.id))
            await asyncio.sleep(0.1)
        result = waiter.result()
    assert result.state == HostState.MAINTENANCE and len(result.outcomes) == len(names)
    # Three children at a time, but the source's outgoing slots (2 per host, across all tasks)
    # let only two migrate at once.
    assert result.runs == 3 and own_worker.meter.peak == 2
    seen = [v for v in views if v is not None]
    assert max(v.in_flight for v in seen) <= 3
    assert any(v.eta_seconds and v.moved for v in seen), "an ETA once some VMs moved"
    assert all(v.moved + v.in_flight + v.remaining + v.failed == len(names) for v in seen
               if v.moved or v.in_flight)
    assert set(lab.domains(dst)) == set(names)


async def test_migration_slots_hold_across_tasks(own_worker: OwnWorker, lab: Lab,
                                                 db: Database) -> None:
    """Two clear-hosts and two direct migrations at once, each allowed 4 in flight and 2 out of
    each source: together never more than the cluster's 3, and all of them."""
    client = own_worker.client
    own_worker.meter.delay = 1.5  # long enough that moves overlap however slow the machine
    a, b = lab.host(1, vcpus=16, memory_mib=16384), lab.host(2, vcpus=16, memory_mib=16384)
    c, d = lab.host(3, vcpus=16, memory_mib=16384), lab.host(4, vcpus=16, memory_mib=16384)
    with only_hosts_up(db, [a.name, b.name, c.name, d.name]):
        cleared = await fill(client, lab, a, 4, "sa") + await fill(client, lab, b, 4, "sb")
        on_c = await fill(client, lab, c, 2, "sc")
        clears = [await client.clear_host(ClearHostRequest(host=h.name, parallel=4))
                  for h in (a, b)]
        direct = [await client.migrate_vm(MigrateVmRequest(name=n, to=d.name)) for n in on_c]
        results = [await host_result(client, h) for h in clears]
        await asyncio.gather(*(h.result() for h in direct))
    assert [r.state for r in results] == [HostState.MAINTENANCE] * 2
    assert own_worker.meter.peak == 3  # the cluster's slots, reached and never passed
    assert set(lab.domains(a)) == set(lab.domains(b)) == set()
    assert set(on_c) <= set(lab.domains(d))
    assert sorted(own_worker.meter.calls) == sorted(cleared + on_c)  # each moved exactly once


async def test_worker_killed_mid_clear_host_then_replaced(own_worker: OwnWorker, lab: Lab,
                                                          db: Database) -> None:
    client = own_worker.client
    src, dst = lab.host(1, vcpus=16, memory_mib=16384), lab.host(2, vcpus=16, memory_mib=16384)
    with only_hosts_up(db, [src.name, dst.name]):
        names = await fill(client, lab, src, 10, "kill")
        clear = await client.clear_host(ClearHostRequest(host=src.name, parallel=2, batch=4))
        for _ in range(200):
            view = await client.host_moves(clear.id)
            if view is not None and view.moved >= 3:
                break
            await asyncio.sleep(0.05)
        await own_worker.stop()  # in-flight migrations are cut off mid-way
        moved_before = len(lab.domains(dst))
        assert 0 < moved_before < len(names)
        await own_worker.start()
        result = await host_result(client, clear)
    assert result.state == HostState.MAINTENANCE
    assert sorted(o.vm for o in result.outcomes) == sorted(names)
    assert lab.domains(src) == {} and set(lab.domains(dst)) == set(names)
    placement(lab, db)
    assert reservations(db) == []


async def test_cancelled_migration_leaves_the_vm_on_its_source(own_worker: OwnWorker, lab: Lab,
                                                               db: Database) -> None:
    client = own_worker.client
    own_worker.meter.delay = 30.0
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        [name] = await fill(client, lab, src, 1, "cancel")
        handle = await client.migrate_vm(MigrateVmRequest(name=name, to=dst.name))
        for _ in range(200):
            if own_worker.meter.running:
                break
            await asyncio.sleep(0.05)
        assert own_worker.meter.running == 1
        await handle.cancel()
        with pytest.raises(TaskError):
            await handle.result()
    progress = await handle.progress()
    assert progress is not None
    assert [s.name for s in progress.steps if s.state == "compensated"] == [
        "confirm where the VM runs", "release destination"]
    assert lab.domains(src) == {name: True} and lab.domains(dst) == {}
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.host == src.name
    assert reservations(db) == []


async def test_clear_host_waits_for_tasks_placed_before_maintenance(
        own_worker: OwnWorker, lab: Lab, db: Database) -> None:
    client = own_worker.client
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        await fill(client, lab, src, 2, "old")
        own_worker.meter.starts_open.clear()
        late = lab.vm_name("late")  # placed on src before maintenance, still starting
        create = await client.create_vm(CreateVmRequest(name=late, host=src.name, start=True))
        for _ in range(200):
            if late in reservations(db):
                break
            await asyncio.sleep(0.05)
        clear = await client.clear_host(ClearHostRequest(host=src.name))
        waiting = None
        for _ in range(200):
            waiting = await clear.progress()
            if waiting is not None and waiting.current_step == (
                    "wait for tasks placed before maintenance"):
                break
            await asyncio.sleep(0.05)
        assert waiting is not None and waiting.current_step == (
            "wait for tasks placed before maintenance")
        assert state(db, src.name) == HostState.MAINTENANCE
        own_worker.meter.starts_open.set()
        assert (await create.result()).host == src.name
        result = await host_result(client, clear)
    assert result.state == HostState.MAINTENANCE
    assert late in {o.vm for o in result.outcomes if o.outcome == "moved"}
    assert lab.domains(src) == {} and len(lab.domains(dst)) == 3
    placement(lab, db)
    assert reservations(db) == []
