"""Clusters on libvirt test-driver hosts, real PostgreSQL (and Temporal for the CLI and a
migration): the schema migration of an existing inventory, a host joining a cluster (driver,
CPU baseline, capacity read from libvirt times the overcommit), and placement never leaving a
cluster."""

from __future__ import annotations

import asyncio
import uuid

import psycopg2
import pytest
from cli_helpers import cli_on_stack, named_field, run_cli
from cluster_helpers import cluster, join
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.client import RequestError, TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.errors import ErrorType, error_info
from taskomatic.inventory.db import Database, ensure_database, migrations, upgrade
from taskomatic.models import (
    ClusterSpec,
    CreateVmRequest,
    HostSpec,
    MigrateVmRequest,
    ReserveCapacityInput,
)
from taskomatic.settings import Settings

# --- the schema migration -----------------------------------------------------------------------


def test_existing_hosts_move_into_a_default_cluster_per_hypervisor_type(
        scratch_database_url: str) -> None:
    ensure_database(scratch_database_url)
    conn = psycopg2.connect(scratch_database_url)
    with conn, conn.cursor() as cur:  # the inventory as it was before clusters
        for _version, _name, text in [m for m in migrations() if m[0] < 6]:
            cur.execute(text)
        cur.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text"
                    " NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        cur.executemany("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        [(v, n) for v, n, _ in migrations() if v < 6])
        for name, uri in (("t1", "test:///tmp/t1.xml"), ("q1", "qemu+tcp://kvm1/system"),
                          ("t2", "test:///tmp/t2.xml"), ("q2", "qemu:///system")):
            cur.execute("INSERT INTO hosts (name, uri, vcpus, memory_mib) VALUES (%s, %s, 8, 4096)",
                        (name, uri))
        cur.execute("INSERT INTO vms (name, uuid, host_id, vcpus, memory_mib, state) SELECT 'v1',"
                    " gen_random_uuid(), id, 2, 512, 'running' FROM hosts WHERE name = 't1'")
        cur.execute("INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib)"
                    " SELECT 'task-1', id, 'v2', 1, 256 FROM hosts WHERE name = 't1'")
    conn.close()
    assert upgrade(scratch_database_url)[0] == "0006_clusters.sql"  # and those after it
    db = Database(scratch_database_url)
    try:
        clusters = {c.name: c for c in inventory.list_clusters(db)}
        assert {n: (c.hypervisor_type, c.hosts) for n, c in clusters.items()} == {
            "default": ("test", ["t1", "t2"]), "default-qemu": ("qemu", ["q1", "q2"])}
        assert (clusters["default"].vcpu_overcommit, clusters["default"].memory_overcommit,
                clusters["default"].weigher) == (4.0, 1.0, "spread")
        # Capacities registered before stay what they were (explicit).
        assert {(h.name, h.vcpus, h.memory_mib) for h in inventory.list_hosts(db)} == {
            (n, 8, 4096) for n in ("t1", "t2", "q1", "q2")}
        with db.transaction() as cur:  # the usage counters start from what is recorded
            cur.execute("SELECT name, vcpus, memory_mib, vcpus_total, memory_total"
                        " FROM host_usage ORDER BY name")
            assert [tuple(r.values()) for r in cur.fetchall()] == [
                ("q1", 0, 0, 8, 4096), ("q2", 0, 0, 8, 4096), ("t1", 3, 768, 8, 4096),
                ("t2", 0, 0, 8, 4096)]
    finally:
        db.close()


# --- joining a cluster ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_capacity_is_libvirts_times_the_overcommit_unless_given(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "oc", vcpu_overcommit=2.5, memory_overcommit=1.5)
    derived = await join(client, lab, 1, c, cpus=6, physical_mib=5000)
    explicit = await join(client, lab, 2, c, cpus=6, physical_mib=5000, vcpus=3, memory_mib=1024)
    one, two = inventory.get_host(db, derived.name), inventory.get_host(db, explicit.name)
    assert one is not None and two is not None
    assert (one.cluster, one.hypervisor_type, one.cpu_model) == (c, "test", "taskomatic-test")
    assert (one.cpus, one.physical_memory_mib, one.vcpus, one.memory_mib) == (6, 5000, 15, 7500)
    assert (two.cpus, two.vcpus, two.memory_mib) == (6, 3, 1024)
    shown = await client.cluster(c)
    assert shown is not None and (shown.hosts, shown.vcpus, shown.memory_mib) == (
        [derived.name, explicit.name], 18, 8524)


@pytest.mark.asyncio
async def test_a_host_joins_only_a_compatible_cluster(client: TaskomaticClient, lab: Lab,
                                                      db: Database) -> None:
    qemu = f"c{lab.prefix}-qemu"
    inventory.create_cluster(db, ClusterSpec(name=qemu, hypervisor_type="qemu"))
    baseline = cluster(db, lab, "cpu", cpu_model="Haswell")
    same_cpu = cluster(db, lab, "same", cpu_model="taskomatic-test")
    cases = [(qemu, "cluster", "is a 'test' hypervisor; cluster"),
             (baseline, "cpu_model", "has CPU 'taskomatic-test'; cluster"),
             (f"c{lab.prefix}-none", "cluster", "no cluster named")]
    for index, (target, field, words) in enumerate(cases, start=1):
        with pytest.raises(RequestError) as refused:
            await join(client, lab, index, target)
        assert refused.value.field == field and words in str(refused.value)
        assert inventory.get_host(db, f"h{lab.prefix}-{index}") is None  # nothing half-made
    joined = await join(client, lab, 9, same_cpu)
    host = inventory.get_host(db, joined.name)
    assert host is not None and host.cluster == same_cpu
    with pytest.raises(RequestError) as moved:  # the same host again, into another cluster
        await client.add_host(joined.model_copy(update={"cluster": baseline}))
    assert moved.value.field == "cluster"


def test_without_probe_the_capacity_must_be_given(lab: Lab, db: Database) -> None:
    spec = HostSpec(name=f"h{lab.prefix}-np", uri=f"qemu+tcp://127.0.0.1:1/{lab.prefix}")
    with pytest.raises(Exception) as refused:
        inventory.add_host(db, spec)
    assert error_info(refused.value).field == "vcpus"
    assert inventory.get_host(db, spec.name) is None


def test_a_cluster_is_created_once(lab: Lab, db: Database) -> None:
    spec = ClusterSpec(name=f"c{lab.prefix}", hypervisor_type="test", weigher="pack")
    first, created = inventory.create_cluster(db, spec)
    again, created_again = inventory.create_cluster(db, spec)
    assert (created, created_again, first, again.weigher) == (True, False, again, "pack")
    with pytest.raises(Exception) as refused:
        inventory.create_cluster(db, spec.model_copy(update={"weigher": "spread"}))
    info = error_info(refused.value)
    assert (info.type, info.field) == (ErrorType.INVALID_REQUEST, "name")
    assert "already exists with weigher 'pack'" in info.message


# --- placement stays inside a cluster ------------------------------------------------------------


@pytest.mark.asyncio
async def test_moves_never_leave_the_cluster(client: TaskomaticClient, lab: Lab,
                                             db: Database) -> None:
    small, big = cluster(db, lab, "small"), cluster(db, lab, "big")
    a = await join(client, lab, 1, small, vcpus=2, memory_mib=1024)
    b = await join(client, lab, 2, small, vcpus=2, memory_mib=1024)
    roomy = await join(client, lab, 3, big, vcpus=64, memory_mib=65536)
    name = lab.vm_name("stay")
    await (await client.create_vm(CreateVmRequest(name=name, host=a.name, vcpus=1,
                                                  memory_mib=256))).result()
    # The dry run and the move pick the other host of the cluster, not the roomier one.
    assert [(m.vm, m.destination) for m in inventory.plan_moves(db, a.name, [name])] == [
        (name, b.name)]
    moved = await (await client.migrate_vm(MigrateVmRequest(name=name))).result()
    assert moved.host == b.name
    with pytest.raises(RequestError) as refused:
        await client.migrate_vm(MigrateVmRequest(name=name, to=roomy.name))
    assert refused.value.field == "to" and "never move between clusters" in str(refused.value)
    # With the cluster's other host full, nothing fits, whatever room the other cluster has.
    filler = ReserveCapacityInput(task_id=f"fill-{uuid.uuid4().hex[:6]}", vm_name=f"f{name}",
                                  vcpus=2, memory_mib=1024, host=a.name)
    inventory.reserve_capacity(db, filler)
    try:
        with pytest.raises(Exception) as full:
            inventory.reserve_capacity(db, ReserveCapacityInput(
                task_id=f"t-{uuid.uuid4().hex[:6]}", vm_name=name, vcpus=1, memory_mib=256,
                exclude=[b.name]), moving=True)
        assert error_info(full.value).type == ErrorType.NO_CAPACITY
        assert inventory.plan_moves(db, b.name, [name])[0].destination is None
    finally:
        inventory.release_capacity(db, filler.task_id)


# --- the CLI --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cluster_cli_creates_lists_shows_and_refuses_by_field(
        monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment, settings: Settings,
        worker: Worker, client: TaskomaticClient, lab: Lab) -> None:
    name = f"c{lab.prefix}-cli"
    host = f"h{lab.prefix}-cli"
    uri = write_test_host(lab.dir, host, 2, 2048)
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        assert await asyncio.to_thread(run_cli, ["cluster", "create", name, "--hypervisor-type",
                                                 "test", "--vcpu-overcommit", "3"]) == (0, "")
        code, err = await asyncio.to_thread(run_cli, ["host", "add", host, "--uri", uri,
                                                      "--cluster", name])
        assert code == 0, err
        lab.hosts.append(HostSpec(name=host, uri=uri, vcpus=1, memory_mib=64))
    shown = await client.cluster(name)
    assert shown is not None and (shown.hosts, shown.vcpus, shown.memory_mib) == ([host], 6, 2048)
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        for argv, field in ((["cluster", "create", f"{name}x", "--hypervisor-type", "Q Q"],
                             "hypervisor_type"),
                            (["cluster", "create", f"{name}y", "--hypervisor-type", "test",
                              "--memory-overcommit", "0"], "memory_overcommit"),
                            (["cluster", "show", f"{name}z"], "name"),
                            (["host", "add", f"{host}b", "--uri", uri.replace(".xml", "b.xml"),
                              "--cluster", f"{name}z", "--no-probe", "--vcpus", "1",
                              "--memory-mib", "64"], "cluster")):
            code_, err = await asyncio.to_thread(run_cli, argv)
            assert (code_, named_field(err)) == (2, field), err



@pytest.mark.asyncio
async def test_a_mixed_inventory_never_moves_vms_between_hypervisor_types(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    """Test-driver hosts and a (roomier) QEMU host registered without a cluster land in
    different default clusters, and no move or plan ever picks the QEMU host."""
    a, b = lab.host(1, vcpus=2, memory_mib=1024), lab.host(2, vcpus=2, memory_mib=1024)
    qemu = HostSpec(name=f"q{lab.prefix}", uri=f"qemu+tcp://127.0.0.1:1/{lab.prefix}",
                    vcpus=64, memory_mib=65536)
    inventory.add_host(db, qemu)
    lab.hosts.append(qemu)
    kinds = {h.name: (h.cluster, h.hypervisor_type) for h in inventory.list_hosts(db)}
    assert kinds[a.name][1] == kinds[b.name][1] == "test" and kinds[qemu.name][1] == "qemu"
    assert kinds[a.name][0] == kinds[b.name][0] != kinds[qemu.name][0]
    name = lab.vm_name("mixed")
    await (await client.create_vm(CreateVmRequest(name=name, host=a.name, memory_mib=256))
           ).result()
    assert [m.destination for m in inventory.plan_moves(db, a.name, [name])] == [b.name]
    moved = await (await client.migrate_vm(MigrateVmRequest(name=name))).result()
    assert moved.host == b.name
    with pytest.raises(RequestError) as refused:
        await client.migrate_vm(MigrateVmRequest(name=name, to=qemu.name))
    assert refused.value.field == "to"
    # With the other test host out of service, nothing is left: the QEMU host is no option.
    with db.transaction() as cur:
        cur.execute("UPDATE hosts SET state = 'down' WHERE name = %s", (a.name,))
    [move] = inventory.plan_moves(db, b.name, [name])
    assert move.destination is None and move.reason is not None
    assert qemu.name not in move.reason and "hosts of other clusters" in move.reason
