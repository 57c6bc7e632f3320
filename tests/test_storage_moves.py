"""VMs with disks move only where their storage is: libvirt test-driver hosts, real Temporal and
PostgreSQL. A VM whose disks are in a pool no other host sees is not movable, and every path
(dry run, migrate, clear-host) says so with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg2
import pytest
from helpers import only_hosts_up
from storage_helpers import pool_name, pool_path
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from test_clear_host import host_result, placement, state
from test_migration import reservations

from conftest import Lab
from starter.client import RequestError, TaskError, TaskHandle, TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.inventory.db import Database, ensure_database, migrations, upgrade
from taskomatic.models import (
    ClearHostRequest,
    ClusterSpec,
    CreatePoolRequest,
    CreateVmRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    DiskRequest,
    HostSpec,
    HostState,
    MigrateVmRequest,
)
from taskomatic.units import GIB
from workflows.kinds import TASK_WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"


def test_pools_recorded_before_0007_are_seen_by_their_host(scratch_database_url: str) -> None:
    ensure_database(scratch_database_url)
    conn = psycopg2.connect(scratch_database_url)
    with conn, conn.cursor() as cur:  # the inventory before clusters and shared pools
        cur.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text"
                    " NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for version, name, text in [m for m in migrations() if m[0] < 6]:
            cur.execute(text)
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name))
        cur.execute("INSERT INTO hosts (name, uri, vcpus, memory_mib)"
                    " VALUES ('h1', 'test:///tmp/h1.xml', 8, 4096)")
        for name, state in (("up", "active"), ("down", "inactive"), ("new", "creating")):
            cur.execute("INSERT INTO storage_pools (name, host_id, type, path, state) SELECT"
                        " %s, id, 'dir', %s, %s FROM hosts", (name, f"/p/{name}", state))
    conn.close()
    assert upgrade(scratch_database_url)[:2] == ["0006_clusters.sql", "0007_pool_hosts.sql"]
    db = Database(scratch_database_url)
    try:
        pools = {p.name: p for p in inventory.list_pools(db)}
        assert {n: (p.scope, [(h.host, h.state) for h in p.hosts]) for n, p in pools.items()} == {
            "up": ("local", [("h1", "active")]), "down": ("local", [("h1", "inactive")]),
            "new": ("local", [])}
        host = inventory.get_host(db, "h1")
        assert host is not None and host.pools == ["up"]
    finally:
        db.close()


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


@pytest.mark.asyncio
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
                                   f"{src.name}), which no other host sees; allow a storage "
                                   "copy (--copy-storage) to move it")

        for pinned in (None, dst.name):
            with pytest.raises(TaskError) as refused:
                await (await client.migrate_vm(MigrateVmRequest(name=d1, to=pinned))).result()
            failure = refused.value.failure
            assert failure.error_type == "NotMigratable"
            assert failure.field == ("to" if pinned else "name")
            assert pool in failure.message and failure.vm == d1
        assert placement(lab, db)[d1] == [src.name]
        assert inventory.vm_disks(db, d1) == disks_before
        assert reservations(db, lab.vm_name("")) == []

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


# --- shared pools --------------------------------------------------------------------------------


def cluster_host(lab: Lab, db: Database, index: int, cluster: str) -> HostSpec:
    """A fresh test-driver host of ``cluster`` (8 vCPUs / 8 GiB); it leaves service after."""
    name = f"h{lab.prefix}-{index}"
    spec = HostSpec(name=name, uri=write_test_host(lab.dir, name, 8, 8192), vcpus=8,
                    memory_mib=8192, cluster=cluster)
    inventory.add_host(db, spec)
    lab.hv.connection(spec.uri)
    lab.hosts.append(spec)
    return spec


def host_pools(db: Database, host: HostSpec) -> list[str]:
    """The pools the host's load says it sees (what placement's ``sees_pools`` reads)."""
    found = inventory.get_host(db, host.name)
    assert found is not None
    return found.pools


def seen_by(db: Database, pool: str) -> dict[str, str]:
    found = inventory.get_pool(db, pool)
    assert found is not None
    return {h.host: h.state for h in found.pool.hosts}


@pytest.mark.asyncio
async def test_shared_pool_is_on_every_host_of_its_cluster_and_its_vms_move(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    cluster = f"c{lab.prefix}"
    inventory.create_cluster(db, ClusterSpec(name=cluster, hypervisor_type="test"))
    h1, h2, h3 = (cluster_host(lab, db, i, cluster) for i in (1, 2, 3))
    elsewhere = lab.host(4)  # the default cluster: never sees the pool
    name = pool_name(lab, "shared")
    # h3 has a different pool of that name already: the pool cannot be defined there.
    lab.hv.connection(h3.uri).storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>/srv/other</path></target></pool>",
        0)
    runs: dict[str, TaskHandle] = {}
    with only_hosts_up(db, [h.name for h in lab.hosts]):
        runs["CreateStoragePool"] = await client.create_pool(CreatePoolRequest(
            name=name, host=h1.name, path=pool_path(lab, "shared"), shared=True))
        done = await runs["CreateStoragePool"].result()
        assert seen_by(db, name) == {h1.name: "active", h2.name: "active", h3.name: "failed"}
        found = inventory.get_pool(db, name)
        assert found is not None and found.pool.scope == "shared"
        failed = next(h for h in found.pool.hosts if h.host == h3.name)
        assert "already exists" in (failed.detail or "")
        assert any(n.startswith(f"{h3.name}: ") for n in done.notes)
        for host in (h1, h2):
            active = lab.hv.connection(host.uri).storagePoolLookupByName(name)
            assert active.isActive() and active.autostart()
        assert [host_pools(db, h) for h in (h1, h2, h3)] == [[name], [name], []]

        vm = await vm_with_disk(client, lab, name, "s1")
        on = inventory.get_vm(db, vm)
        assert on is not None and on.vm.host in (h1.name, h2.name)
        src = on.vm.host
        dst = h2.name if src == h1.name else h1.name
        disks = inventory.vm_disks(db, vm)
        assert [(d.pool, d.host) for d in disks.disks] == [(name, src)]

        dry = await host_result(client, await client.clear_host(ClearHostRequest(
            host=src, dry_run=True)))
        assert [(m.vm, m.destination) for m in dry.plan] == [(vm, dst)]
        with pytest.raises(TaskError) as refused:
            await (await client.migrate_vm(MigrateVmRequest(name=vm, to=h3.name))).result()
        assert refused.value.failure.field == "to"
        assert f"{h3.name} does not see pool {name!r}" in refused.value.failure.message
        with pytest.raises(RequestError) as early:  # another cluster: refused at once
            await client.migrate_vm(MigrateVmRequest(name=vm, to=elsewhere.name))
        assert early.value.field == "to"

        runs["MigrateVm"] = await client.migrate_vm(MigrateVmRequest(name=vm))
        moved = await runs["MigrateVm"].result()
        assert moved.host == dst and placement(lab, db)[vm] == [dst]
        assert [(d.pool, d.volume, d.host) for d in inventory.vm_disks(db, vm).disks] == [
            (name, disks.disks[0].volume, dst)]

        # h3 is fixed and h5 joins: what `host add` starts for h5 (a refresh of each shared
        # pool of its cluster it lacks) brings the pool to both.
        lab.hv.connection(h3.uri).storagePoolLookupByName(name).undefine()
        h5 = cluster_host(lab, db, 5, cluster)
        assert await client.share_pools(elsewhere.name) == []
        [runs["RefreshStoragePool"]] = await client.share_pools(h5.name)
        await runs["RefreshStoragePool"].result()
        assert seen_by(db, name) == {h.name: "active" for h in (h1, h2, h3, h5)}
        assert await client.share_pools(h5.name) == []

        await (await client.destroy_vm(DestroyVmRequest(name=vm))).result()
        runs["DestroyStoragePool"] = await client.destroy_pool(DestroyPoolRequest(name=name))
        await runs["DestroyStoragePool"].result()
        for host in (h1, h2, h3, h5):
            assert name not in [p.name() for p in
                                lab.hv.connection(host.uri).listAllStoragePools(0)]
        assert inventory.get_pool(db, name) is None

    # The shared-pool steps replay; recorded, they guard the patch "h13b-shared-pool".
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    for label, handle in runs.items():
        history = await client.temporal.get_workflow_handle(handle.id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{label}: {result.replay_failure}"
        if os.environ.get("TASKOMATIC_RECORD_HISTORIES"):
            (HISTORIES / f"{label}-shared-pool.json").write_text(history.to_json())
