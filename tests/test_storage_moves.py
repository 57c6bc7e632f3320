"""VMs with disks move only where their storage is: libvirt test-driver hosts, real Temporal and
PostgreSQL. A VM whose disks are in a pool no other host sees is not movable, and every path
(dry run, migrate, clear-host) says so with the reason."""

from __future__ import annotations

import pytest
from helpers import only_hosts_up
from storage_helpers import pool_name, pool_path
from test_clear_host import host_result, placement, state
from test_migration import reservations

from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    DiskRequest,
    HostSpec,
    HostState,
    MigrateVmRequest,
)
from taskomatic.units import GIB

pytestmark = pytest.mark.asyncio


async def local_pool(client: TaskomaticClient, lab: Lab, host: HostSpec, label: str) -> str:
    name = pool_name(lab, label)
    await (await client.create_pool(CreatePoolRequest(
        name=name, host=host.name, path=pool_path(lab, label)))).result()
    return name


async def vm_with_disk(client: TaskomaticClient, lab: Lab, pool: str, label: str) -> str:
    name = lab.vm_name(label)
    await (await client.create_vm(CreateVmRequest(
        name=name, vcpus=1, memory_mib=256, start=True,
        disks=[DiskRequest(pool=pool, size=GIB)]))).result()
    return name


async def test_vm_on_a_local_pool_is_not_movable(client: TaskomaticClient, lab: Lab,
                                                 db: Database) -> None:
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        pool = await local_pool(client, lab, src, "images")
        d1 = await vm_with_disk(client, lab, pool, "d1")
        plain = lab.vm_name("plain")
        await (await client.create_vm(CreateVmRequest(
            name=plain, host=src.name, vcpus=1, memory_mib=256, start=True))).result()
        disks_before = inventory.vm_disks(db, d1)
        assert [d.pool for d in disks_before.disks] == [pool]

        dry = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name, dry_run=True)))
        plan = {m.vm: m for m in dry.plan}
        assert plan[plain].destination == dst.name
        assert plan[d1].destination is None
        assert plan[d1].reason == (f"not movable: its disks are in pool {pool!r} (local to "
                                   f"{src.name}), which no other host sees")

        for pinned in (None, dst.name):
            with pytest.raises(TaskError) as refused:
                await (await client.migrate_vm(MigrateVmRequest(name=d1, to=pinned))).result()
            failure = refused.value.failure
            assert failure.error_type == "NotMigratable"
            assert failure.field == ("to" if pinned else "name")
            assert pool in failure.message and failure.vm == d1
        assert placement(lab, db)[d1] == [src.name]
        assert inventory.vm_disks(db, d1) == disks_before
        assert reservations(db) == []

        cleared = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name)))
        assert cleared.state == HostState.MAINTENANCE_FAILED
        outcomes = {o.vm: o for o in cleared.outcomes}
        assert outcomes[plain].outcome == "moved" and outcomes[plain].destination == dst.name
        assert outcomes[d1].outcome == "failed"
        assert f"name: {plan[d1].reason}" in (outcomes[d1].reason or "")
        assert lab.domains(src) == {d1: True}

        again = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src.name, stop_unmigratable=True)))
        assert again.state == HostState.MAINTENANCE
        assert [(o.vm, o.outcome) for o in again.outcomes] == [(d1, "stopped")]
        assert state(db, src.name) == HostState.MAINTENANCE
        assert lab.domains(src) == {d1: False}
        assert inventory.vm_disks(db, d1) == disks_before
