"""MigrateVm on libvirt test-driver hosts (cold moves: save + restore), real Temporal and
PostgreSQL. Failures are injected by replacing one activity on a worker of its own queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from helpers import faulty_client, force_host_state, only_hosts_up
from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from conftest import Lab
from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    HostSpec,
    HostState,
    MigrateDomainInput,
    MigrateVmRequest,
    MigrationReport,
    StartVmRequest,
    StopVmRequest,
)
from taskomatic.settings import Settings
from worker import activity_list

pytestmark = pytest.mark.asyncio


def where(lab: Lab, name: str) -> dict[str, bool]:
    """host → running, for every lab host libvirt has ``name`` on."""
    found = {}
    for host in lab.hosts:
        doms = lab.domains(host)
        if name in doms:
            found[host.name] = doms[name]
    return found


def reservations(db: Database, prefix: str = "") -> list[str]:
    """VMs holding a reservation (only those named ``prefix…`` when given: other tests of the
    session may leave theirs on purpose)."""
    with db.transaction() as cur:
        cur.execute("SELECT vm_name FROM reservations WHERE vm_name LIKE %s", (f"{prefix}%",))
        return [r["vm_name"] for r in cur.fetchall()]


async def create(client: TaskomaticClient, name: str, host: HostSpec, start: bool = True,
                 vcpus: int = 1) -> None:
    await (await client.create_vm(CreateVmRequest(name=name, host=host.name, start=start,
                                                  vcpus=vcpus, memory_mib=256))).result()


async def test_cold_migration_keeps_the_vm_exactly_once(client: TaskomaticClient, lab: Lab,
                                                         db: Database) -> None:
    a, b = lab.host(1), lab.host(2)
    name = lab.vm_name("move")
    await create(client, name, a)
    result = await (await client.migrate_vm(MigrateVmRequest(name=name, to=b.name))).result()
    assert (result.host, result.state) == (b.name, "running")
    assert result.notes[0] == f"saved, restored on {b.name}"
    assert where(lab, name) == {b.name: True}
    vm = inventory.get_vm(db, name)
    assert vm is not None and (vm.vm.host, vm.vm.state, vm.vm.origin_host) == (b.name, "running",
                                                                             None)
    assert name not in reservations(db)
    host_a, host_b = inventory.get_host(db, a.name), inventory.get_host(db, b.name)
    assert host_a is not None and host_b is not None
    assert (host_a.used_vcpus, host_b.used_vcpus) == (0, 1)

    # A shut-off VM moves offline (redefined), and placement picks the only other host.
    await (await client.stop_vm(StopVmRequest(name=name, force=True))).result()
    with only_hosts_up(db, [a.name, b.name]):
        back = await (await client.migrate_vm(MigrateVmRequest(name=name))).result()
    assert (back.host, back.state, back.notes[0]) == (a.name, "shutoff", f"redefined on {a.name}")
    assert where(lab, name) == {a.name: False}


async def test_migrate_refuses_bad_requests_by_field(client: TaskomaticClient, lab: Lab,
                                                     db: Database) -> None:
    a, b = lab.host(1), lab.host(2)
    name = lab.vm_name("bad")
    await create(client, name, a)
    with pytest.raises(RequestError) as err:
        await client.migrate_vm(MigrateVmRequest(name=lab.vm_name("nope")))
    assert err.value.field == "name"
    with pytest.raises(RequestError) as err:
        await client.migrate_vm(MigrateVmRequest(name=name, to=a.name))
    assert err.value.field == "to" and "already on" in str(err.value)
    force_host_state(db, b.name, HostState.MAINTENANCE)
    with pytest.raises(RequestError) as err:
        await client.migrate_vm(MigrateVmRequest(name=name, to=b.name))
    assert err.value.field == "to" and "maintenance" in str(err.value)


async def test_pinned_destination_in_maintenance_fails_clearly(client: TaskomaticClient,
                                                               lab: Lab, db: Database) -> None:
    a, b = lab.host(1), lab.host(2)
    name = lab.vm_name("pin")
    await create(client, name, a)
    # As if submitted while b was up and b entered maintenance before the task placed the VM:
    # the starter's advisory check is skipped, placement at run time refuses.
    force_host_state(db, b.name, HostState.MAINTENANCE)
    req = client.with_defaults("MigrateVm", MigrateVmRequest(name=name, to=b.name))
    handle = await client.submit("MigrateVm", req)
    with pytest.raises(TaskError) as err:
        await handle.result()
    failure = err.value.failure
    assert (failure.error_type, failure.field, failure.step) == (
        ErrorType.HOST_NOT_AVAILABLE.value, "to", "reserve destination")
    assert "maintenance" in failure.message
    assert where(lab, name) == {a.name: True}
    assert name not in reservations(db)


@pytest.fixture
async def failing_destination(temporal_env: WorkflowEnvironment, settings: Settings,
                              hypervisors: Hypervisors, db: Database
                              ) -> AsyncIterator[tuple[TaskomaticClient, list[str], set[str]]]:
    """A worker whose migrate_domain refuses some destinations; yields (client, destinations
    tried, destinations that refuse — "first": whichever is tried first)."""
    tried: list[str] = []
    refuse: set[str] = set()
    queue = settings.model_copy(update={"task_queue": f"mig-{uuid.uuid4().hex[:6]}"})
    real = next(a for a in activity_list(queue, hypervisors, temporal_env.client)
                if getattr(a, "__name__", "") == "migrate_domain")

    @activity.defn(name="migrate_domain")
    async def migrate_domain(inp: MigrateDomainInput) -> MigrationReport:
        tried.append(inp.destination.name)
        if inp.destination.name in refuse or ("first" in refuse and len(tried) == 1):
            raise task_error(ErrorType.MIGRATION_FAILED, f"injected: {inp.destination.name} "
                             "refused the migration", host=inp.source.name, vm=inp.name)
        report: MigrationReport = await real(inp)
        return report

    async for client in faulty_client(temporal_env, settings, hypervisors, db, migrate_domain):
        yield client, tried, refuse


async def test_failed_destination_is_released_and_another_tried(
        failing_destination: tuple[TaskomaticClient, list[str], set[str]], lab: Lab,
        db: Database) -> None:
    client, tried, refuse = failing_destination
    src, d1, d2 = lab.host(1), lab.host(2), lab.host(3)
    name = lab.vm_name("retry")
    await create(client, name, src)
    refuse.add("first")
    with only_hosts_up(db, [src.name, d1.name, d2.name]):
        result = await (await client.migrate_vm(MigrateVmRequest(name=name))).result()
    assert len(tried) == 2 and set(tried) == {d1.name, d2.name}
    assert result.host == tried[1] and f"tried {tried[0]}, {tried[1]}" in result.notes
    assert where(lab, name) == {tried[1]: True}
    assert name not in reservations(db)


async def test_at_most_three_hosts_are_tried(
        failing_destination: tuple[TaskomaticClient, list[str], set[str]], lab: Lab,
        db: Database) -> None:
    client, tried, refuse = failing_destination
    src = lab.host(1)
    dests = [lab.host(i) for i in range(2, 6)]
    refuse.update(d.name for d in dests)
    name = lab.vm_name("giveup")
    await create(client, name, src)
    with only_hosts_up(db, [src.name, *(d.name for d in dests)]):
        handle = await client.migrate_vm(MigrateVmRequest(name=name))
        with pytest.raises(TaskError) as err:
            await handle.result()
    assert len(tried) == 3 and len(set(tried)) == 3
    assert err.value.failure.error_type == ErrorType.MIGRATION_FAILED.value
    assert "refused" in err.value.failure.message
    assert where(lab, name) == {src.name: True}
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.host == src.name
    assert name not in reservations(db)
    for d in dests:
        host = inventory.get_host(db, d.name)
        assert host is not None and host.reserved_vcpus == 0


async def test_start_moves_a_vm_off_a_host_in_maintenance(client: TaskomaticClient, lab: Lab,
                                                          db: Database) -> None:
    a, b = lab.host(1), lab.host(2)
    name = lab.vm_name("startmove")
    await create(client, name, a, start=False)
    force_host_state(db, a.name, HostState.MAINTENANCE)
    with only_hosts_up(db, [b.name]):
        started = await (await client.start_vm(StartVmRequest(name=name))).result()
    assert (started.host, started.state) == (b.name, "running")
    assert where(lab, name) == {b.name: True}
    vm = inventory.get_vm(db, name)
    assert vm is not None and (vm.vm.host, vm.vm.origin_host) == (b.name, a.name)


async def test_racing_migrations_of_one_vm_leave_it_exactly_once(client: TaskomaticClient,
                                                                 lab: Lab, db: Database) -> None:
    hosts = [lab.host(i) for i in (1, 2, 3)]
    name = lab.vm_name("race")
    await create(client, name, hosts[0])
    with only_hosts_up(db, [h.name for h in hosts]):
        handles = [await client.migrate_vm(MigrateVmRequest(name=name)) for _ in range(4)]
        outcomes = []
        for handle in handles:
            try:
                outcomes.append((await handle.result()).host)
            except TaskError as err:  # refused: another task is moving it
                assert err.failure.error_type == ErrorType.DUPLICATE_VM.value
                assert "already being moved" in err.failure.message
    assert any(outcomes)
    found = where(lab, name)
    vm = inventory.get_vm(db, name)
    assert vm is not None and found == {vm.vm.host: True}
    assert name not in reservations(db)
