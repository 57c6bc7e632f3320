"""Storage tasks end to end: real Temporal, real PostgreSQL, libvirt test-driver pools.

Failures are injected at the activity boundary, as in test_workflows: a worker on its own task
queue runs every real activity except one, replaced by an activity that fails.
"""

from __future__ import annotations

import asyncio
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import faulty_client, host_row_locked
from storage_helpers import (
    libvirt_pools,
    libvirt_volumes,
    pool_name,
    pool_path,
)
from temporalio import activity
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from conftest import Lab
from starter.client import RequestError, TaskError, TaskHandle, TaskomaticClient
from starter.sync import SyncTaskomaticClient
from taskomatic import inventory as inv
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    DiskRequest,
    HostSpec,
    PoolRef,
    PoolReport,
    PoolSource,
    PoolType,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    SetPoolAutostartRequest,
)
from taskomatic.settings import Settings
from taskomatic.units import GIB, MIB
from workflows.kinds import TASK_WORKFLOWS

pytestmark = pytest.mark.asyncio


async def _pool(client: TaskomaticClient, lab: Lab, host: HostSpec, label: str) -> str:
    name = pool_name(lab, label)
    await (await client.create_pool(CreatePoolRequest(
        name=name, host=host.name, path=pool_path(lab, label)))).result()
    return name


async def _history(client: TaskomaticClient, handle: TaskHandle) -> WorkflowHistory:
    return await client.temporal.get_workflow_handle(handle.id).fetch_history()


# --- happy paths -----------------------------------------------------------------------------


async def test_pool_and_volume_lifecycle(client: TaskomaticClient, lab: Lab, db: Database
                                         ) -> None:
    host = lab.host()
    name = pool_name(lab, "life")
    runs: dict[str, TaskHandle] = {}
    runs["create"] = await client.create_pool(CreatePoolRequest(
        name=name, host=host.name, path=pool_path(lab, "life")))
    created = await runs["create"].result()
    assert (created.state, created.host, created.notes) == (
        "active", host.name, ["defined", "built", "started", "autostart on"])
    assert libvirt_pools(lab, host) == {name: (True, True)}
    [record] = [p for p in await client.pools() if p.name == name]
    assert (record.host, record.type, record.state, record.autostart) == (
        host.name, "dir", "active", True)

    runs["autostart"] = await client.set_pool_autostart(SetPoolAutostartRequest(
        name=name, autostart=False))
    assert (await runs["autostart"].result()).notes == ["autostart off"]
    assert libvirt_pools(lab, host) == {name: (True, False)}

    runs["volume"] = await client.create_volume(CreateVolumeRequest(
        pool=name, name="base.qcow2", capacity="1GiB"))
    await runs["volume"].result()
    runs["clone"] = await client.create_volume(CreateVolumeRequest(
        pool=name, name="copy.raw", capacity="1GiB", format="raw", clone_from="base.qcow2"))
    assert (await runs["clone"].result()).notes == ["cloned from base.qcow2"]
    assert libvirt_volumes(lab, host, name) == ["base.qcow2", "copy.raw"]
    vols = {v.name: v for v in await client.volumes(pool=name)}
    assert (vols["base.qcow2"].format, vols["base.qcow2"].capacity) == ("qcow2", GIB)
    assert vols["copy.raw"].format == "raw" and vols["copy.raw"].owner_vm is None

    # A volume made behind the engine's back shows up after a refresh.
    conn = lab.hv.connection(host.uri)
    conn.storagePoolLookupByName(name).createXML(
        "<volume><name>stray</name><capacity>1048576</capacity></volume>", 0)
    runs["refresh"] = await client.refresh_pool(RefreshPoolRequest(name=name))
    await runs["refresh"].result()
    assert [v.name for v in await client.volumes(pool=name)] == ["base.qcow2", "copy.raw",
                                                                 "stray"]

    # The test driver cannot resize: a clear, typed "not supported", nothing changed.
    resize = await client.resize_volume(ResizeVolumeRequest(pool=name, name="base.qcow2",
                                                            capacity="2GiB"))
    with pytest.raises(TaskError) as caught:
        await resize.result()
    assert caught.value.failure.error_type == "NotSupported"
    assert "does not support resizing" in caught.value.failure.message
    vol = inv.get_volume(db, name, "base.qcow2")
    assert vol is not None and vol.volume.capacity == GIB

    runs["delete"] = await client.delete_volume(DeleteVolumeRequest(pool=name, name="stray"))
    await runs["delete"].result()
    assert libvirt_volumes(lab, host, name) == ["base.qcow2", "copy.raw"]

    runs["destroy"] = await client.destroy_pool(DestroyPoolRequest(name=name, delete=True))
    destroyed = await runs["destroy"].result()
    assert destroyed.notes[0] == "deleted 2 volume(s)" and destroyed.state is None
    assert libvirt_pools(lab, host) == {}
    assert inv.get_pool(db, name) is None and await client.volumes(pool=name) == []

    # Every storage task's fresh history replays against today's code.
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    for label, handle in [*runs.items(), ("resize-failed", resize)]:
        result = await replayer.replay_workflow(await _history(client, handle),
                                                raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{label}: {result.replay_failure}"


async def test_create_pool_again_is_refused_and_destroy_without_delete_keeps_storage(
        client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    name = await _pool(client, lab, host, "again")
    with pytest.raises(RequestError) as dup:
        await client.create_pool(CreatePoolRequest(name=name, host=host.name,
                                                   path=pool_path(lab, "other")))
    assert dup.value.field == "name" and host.name in str(dup.value)
    with pytest.raises(RequestError) as same_path:
        await client.create_pool(CreatePoolRequest(name=pool_name(lab, "x"), host=host.name,
                                                   path=pool_path(lab, "again")))
    assert same_path.value.field == "path"
    done = await (await client.destroy_pool(DestroyPoolRequest(name=name))).result()
    assert done.notes == ["stopped", "undefined", "removed from inventory"]
    assert libvirt_pools(lab, host) == {}


@pytest.mark.parametrize("kind", ["netfs", "logical"])
async def test_netfs_and_logical_pools_are_defined_with_their_source(
        client: TaskomaticClient, lab: Lab, kind: str) -> None:
    host = lab.host()
    name = pool_name(lab, kind)
    if kind == "netfs":
        req = CreatePoolRequest(name=name, host=host.name, type=PoolType.NETFS,
                                path=pool_path(lab, kind),
                                source=PoolSource(host="nfs.example.org", dir="/exports/vms"))
    else:
        req = CreatePoolRequest(name=name, host=host.name, type=PoolType.LOGICAL,
                                source=PoolSource(name=f"vg{lab.prefix}", devices=["/dev/sdx"]))
    await (await client.create_pool(req)).result()
    xml = ET.fromstring(lab.hv.connection(host.uri).storagePoolLookupByName(name).XMLDesc(0))
    assert xml.get("type") == kind
    if kind == "netfs":
        assert xml.find("source/host").get("name") == "nfs.example.org"  # type: ignore[union-attr]
        assert xml.find("source/dir").get("path") == "/exports/vms"  # type: ignore[union-attr]
    else:
        assert xml.findtext("source/name") == f"vg{lab.prefix}"
        assert xml.findtext("target/path") == f"/dev/vg{lab.prefix}"
    await (await client.destroy_pool(DestroyPoolRequest(name=name))).result()


# --- compensation ----------------------------------------------------------------------------


def _failing(name: str) -> Any:
    @activity.defn(name=name)
    def fail(ref: PoolRef) -> PoolReport:
        raise task_error(ErrorType.HYPERVISOR_ERROR, f"injected: {name} failed", host=ref.host)
    return fail


@pytest.fixture(params=["build_pool", "start_pool"])
async def failing_pool_client(request: pytest.FixtureRequest, temporal_env: WorkflowEnvironment,
                              settings: Settings, hypervisors: Hypervisors, db: Database
                              ) -> AsyncIterator[tuple[TaskomaticClient, str]]:
    async for c in faulty_client(temporal_env, settings, hypervisors, db,
                                 _failing(request.param)):
        yield c, request.param


async def test_failed_build_or_start_leaves_no_pool(
        failing_pool_client: tuple[TaskomaticClient, str], client: TaskomaticClient, lab: Lab,
        db: Database) -> None:
    faulty, failing = failing_pool_client
    host = lab.host()
    name = pool_name(lab, "doomed")
    task = await faulty.create_pool(CreatePoolRequest(name=name, host=host.name,
                                                      path=pool_path(lab, "doomed")))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert "injected" in failure.message and failure.host == host.name
    if failing == "build_pool":
        assert failure.step == "build pool"
        assert failure.compensated == ["delete pool storage", "undefine pool",
                                       "release pool name"]
    else:
        assert failure.step == "start pool"
        assert failure.compensated == ["stop pool", "delete pool storage", "undefine pool",
                                       "release pool name"]
    assert libvirt_pools(lab, host) == {}
    assert inv.get_pool(db, name) is None
    # The name is free again (on a worker without the fault).
    await (await client.create_pool(CreatePoolRequest(
        name=name, host=host.name, path=pool_path(lab, "doomed")))).result()


async def test_undo_leaves_a_foreign_pool_of_the_same_name_alone(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    """A pool libvirt already has (not in the inventory) makes the define fail; the undefine
    undo must not remove it."""
    host = lab.host()
    name = pool_name(lab, "foreign")
    conn = lab.hv.connection(host.uri)
    conn.storagePoolDefineXML(f"<pool type='dir'><name>{name}</name><target><path>/srv/x"
                              "</path></target></pool>", 0)
    task = await client.create_pool(CreatePoolRequest(name=name, host=host.name,
                                                      path=pool_path(lab, "foreign")))
    with pytest.raises(TaskError) as caught:
        await task.result()
    assert (caught.value.failure.step, caught.value.failure.error_type) == (
        "define pool", "DuplicatePool")
    assert libvirt_pools(lab, host) == {name: (False, False)}
    assert inv.get_pool(db, name) is None


# --- VMs with disks --------------------------------------------------------------------------


async def test_vm_disks_are_placed_with_their_pool_and_owned_ones_deleted(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    lab.host(1)
    host = lab.host(2)
    pool = await _pool(client, lab, host, "vms")
    await (await client.create_volume(CreateVolumeRequest(pool=pool, name="data",
                                                          capacity="64MiB", format="raw"))
           ).result()
    vm = lab.vm_name("disks")
    runs: dict[str, TaskHandle] = {}
    runs["CreateVm-disks"] = await client.create_vm(CreateVmRequest(name=vm, start=True, disks=[
        DiskRequest(pool=pool, size="512MiB"), DiskRequest(volume=f"{pool}/data")]))
    created = await runs["CreateVm-disks"].result()
    assert created.host == host.name  # placed where its pool is, though h1 is emptier
    xml = ET.fromstring(lab.hv.connection(host.uri).lookupByName(vm).XMLDesc(0))
    disks = [(d.find("source").get("volume"), d.find("target").get("dev"))  # type: ignore[union-attr]
             for d in xml.findall("devices/disk")]
    assert disks == [(f"{vm}-disk0.qcow2", "vda"), ("data", "vdb")]
    vols = {v.name: v for v in await client.volumes(pool=pool)}
    assert (vols[f"{vm}-disk0.qcow2"].owner_vm, vols[f"{vm}-disk0.qcow2"].used_by) == (vm, vm)
    assert vols[f"{vm}-disk0.qcow2"].capacity == 512 * MIB
    assert (vols["data"].owner_vm, vols["data"].used_by) == (None, vm)

    # In use: neither the pool nor the attached volume can go.
    with pytest.raises(RequestError) as refused:
        await client.destroy_pool(DestroyPoolRequest(name=pool))
    assert refused.value.field == "name" and vm in str(refused.value) and "data" in str(
        refused.value)
    raced = await client.submit("DestroyStoragePool", DestroyPoolRequest(name=pool))
    # (past the advisory check: the task refuses too)
    with pytest.raises(TaskError) as in_use:
        await raced.result()
    assert (in_use.value.failure.error_type, in_use.value.failure.step) == (
        "StorageInUse", "check pool is unused")
    assert vm in in_use.value.failure.message
    with pytest.raises(RequestError) as attached:
        await client.delete_volume(DeleteVolumeRequest(pool=pool, name="data"))
    assert attached.value.field == "name" and vm in str(attached.value)
    assert libvirt_pools(lab, host)[pool] == (True, True)
    assert libvirt_volumes(lab, host, pool) == ["data", f"{vm}-disk0.qcow2"]

    runs["DestroyVm-disks"] = await client.destroy_vm(DestroyVmRequest(name=vm))
    destroyed = await runs["DestroyVm-disks"].result()
    assert destroyed.notes[-1] == "1 owned volume(s) forgotten"
    assert libvirt_volumes(lab, host, pool) == ["data"]
    assert [(v.name, v.used_by) for v in await client.volumes(pool=pool)] == [("data", None)]
    await (await client.destroy_pool(DestroyPoolRequest(name=pool, delete=True))).result()

    # The VM tasks' disk steps replay; recorded, they guard the "vm-disks" patch from now on.
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    for label, handle in runs.items():
        history = await _history(client, handle)
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{label}: {result.replay_failure}"
        if os.environ.get("TASKOMATIC_RECORD_HISTORIES"):
            (Path(__file__).parent / "histories" / f"{label}.json").write_text(history.to_json())


async def test_destroy_vm_keep_disks_keeps_its_volumes(client: TaskomaticClient, lab: Lab
                                                       ) -> None:
    host = lab.host()
    pool = await _pool(client, lab, host, "keep")
    vm = lab.vm_name("keep")
    await (await client.create_vm(CreateVmRequest(name=vm, disks=[
        DiskRequest(pool=pool, size="1GiB", format="raw")]))).result()
    await (await client.destroy_vm(DestroyVmRequest(name=vm, keep_disks=True))).result()
    assert libvirt_volumes(lab, host, pool) == [f"{vm}-disk0.raw"]
    [kept] = await client.volumes(pool=pool)
    assert (kept.owner_vm, kept.used_by, kept.format) == (None, None, "raw")
    # Now free-standing, it can be attached to another VM.
    other = lab.vm_name("other")
    await (await client.create_vm(CreateVmRequest(name=other, disks=[
        DiskRequest(volume=f"{pool}/{kept.name}")]))).result()
    [again] = await client.volumes(pool=pool)
    assert again.used_by == other
    # Attaching a volume that is in use is refused, naming the field.
    with pytest.raises(RequestError) as taken:
        await client.create_vm(CreateVmRequest(name=lab.vm_name("third"), disks=[
            DiskRequest(volume=f"{pool}/{kept.name}")]))
    assert taken.value.field == "disks.0.volume" and other in str(taken.value)


async def test_failed_vm_create_leaves_no_volume_behind(
        failing_start_client: TaskomaticClient, client: TaskomaticClient, lab: Lab,
        db: Database) -> None:
    host = lab.host()
    pool = await _pool(client, lab, host, "fail")
    vm = lab.vm_name("nodisk")
    task = await failing_start_client.create_vm(CreateVmRequest(
        name=vm, start=True, disks=[DiskRequest(pool=pool, size="1GiB")]))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert failure.step == "start domain"
    assert failure.compensated == ["undefine domain", f"delete volume {pool}/{vm}-disk0.qcow2",
                                   "release capacity"]
    assert libvirt_volumes(lab, host, pool) == []
    assert await client.volumes(pool=pool) == []
    assert lab.domains(host) == {} and inv.vm_disks(db, vm).disks == []


# --- refused requests change nothing ---------------------------------------------------------


async def test_bad_requests_are_refused_by_field_and_change_nothing(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    from starter.client import validated

    host = lab.host()
    good = {"host": host.name, "path": pool_path(lab, "ok")}
    cases: list[tuple[type, dict[str, Any], str]] = [
        (CreatePoolRequest, {**good, "name": "a/b"}, "name"),
        (CreatePoolRequest, {**good, "name": "a<b"}, "name"),
        (CreatePoolRequest, {**good, "name": "x", "path": "relative/dir"}, "path"),
        (CreatePoolRequest, {**good, "name": "x", "path": "/var/lib/../../etc"}, "path"),
        (CreatePoolRequest, {**good, "name": "x", "path": "/var/lib/x'/>"}, "path"),
        (CreatePoolRequest, {**good, "name": "x", "type": "netfs"}, "source"),
        (CreatePoolRequest, {**good, "name": "x", "type": "logical"}, "source"),
        (CreatePoolRequest, {**good, "name": "x", "type": "iscsi"}, "type"),
        (CreateVolumeRequest, {"pool": "p", "name": "../etc", "capacity": "1GiB"}, "name"),
        (CreateVolumeRequest, {"pool": "p", "name": "v<x>", "capacity": "1GiB"}, "name"),
        (CreateVolumeRequest, {"pool": "p/q", "name": "v", "capacity": "1GiB"}, "pool"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": 0}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": "0GiB"}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": -5}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": "-1GiB"}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": "1000TiB"}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": "lots"}, "capacity"),
        (CreateVolumeRequest, {"pool": "p", "name": "v", "capacity": "1GiB",
                               "format": "vmdk"}, "format"),
        (ResizeVolumeRequest, {"pool": "p", "name": "v", "capacity": "0"}, "capacity"),
        (CreateVmRequest, {"name": "x", "disks": [{"pool": "p"}]}, "disks.0"),
        (CreateVmRequest, {"name": "x", "disks": [{"volume": "novolume"}]}, "disks.0.volume"),
        (CreateVmRequest, {"name": "x", "disks": [{"pool": "p", "size": "0MiB"}]},
         "disks.0.size"),
    ]
    for model, fields, field in cases:
        with pytest.raises(RequestError) as caught:
            validated(model, **fields)
        assert caught.value.field == field, (fields, str(caught.value))

    # Valid shape, refused by the inventory or the settings before any task starts.
    refused: list[tuple[Any, str]] = [
        (client.create_pool(CreatePoolRequest(name=pool_name(lab, "etc"), host=host.name,
                                              path="/etc/taskomatic")), "path"),
        (client.create_pool(CreatePoolRequest(name=pool_name(lab, "root"), host=host.name,
                                              path="/var/lib/taskomatic/pools")), "path"),
        (client.create_pool(CreatePoolRequest(name=pool_name(lab, "nohost"), host="nohost",
                                              path=pool_path(lab, "nohost"))), "host"),
        (client.create_volume(CreateVolumeRequest(pool="nopool", name="v", capacity="1GiB")),
         "pool"),
        (client.create_vm(CreateVmRequest(name=lab.vm_name("x"), disks=[
            DiskRequest(pool="nopool", size="1GiB")])), "disks.0.pool"),
    ]
    for call, field in refused:
        with pytest.raises(RequestError) as caught:
            await call
        assert caught.value.field == field, str(caught.value)
        assert "pool_roots" in str(caught.value) or field != "path"
    assert libvirt_pools(lab, host) == {} and lab.domains(host) == {}
    assert inv.list_pools(db, host.name) == []


async def test_task_refuses_a_path_outside_the_roots_even_past_the_precheck(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    host = lab.host()
    name = pool_name(lab, "sneaky")
    task = await client.submit("CreateStoragePool", CreatePoolRequest(
        name=name, host=host.name, path="/etc/sneaky"))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert (failure.step, failure.error_type, failure.field) == (
        "reserve pool name", "InvalidRequest", "path")
    assert libvirt_pools(lab, host) == {} and inv.get_pool(db, name) is None


# --- concurrency and the blocking facade -----------------------------------------------------


async def test_racing_pool_creates_of_one_name_define_one_pool(
        client: TaskomaticClient, lab: Lab, db: Database, database_url: str) -> None:
    """All past the advisory check and lined up behind their hosts' row locks, then let go at
    once: the plan phase's reservation lets exactly one through."""
    h1, h2 = lab.host(1), lab.host(2)
    name = pool_name(lab, "race")
    with host_row_locked(database_url, h1.name) as wait_for_waiters, \
            host_row_locked(database_url, h2.name):
        # ordered=False: past per-resource ordering too, which would run them one by one
        tasks = [await client.submit("CreateStoragePool", CreatePoolRequest(
            name=name, host=h.name, path=pool_path(lab, f"race{i}"), ordered=False))
            for i, h in enumerate((h1, h2, h1))]
        await asyncio.to_thread(wait_for_waiters, 3, 30.0)
    outcomes = await asyncio.gather(*(t.result() for t in tasks), return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, TaskError)]
    assert (len(won), len(lost)) == (1, 2)
    assert {(e.failure.error_type, e.failure.field) for e in lost} == {("DuplicatePool", "name")}
    assert len(libvirt_pools(lab, h1)) + len(libvirt_pools(lab, h2)) == 1
    placed = inv.get_pool(db, name)
    assert placed is not None and placed.pool.state == "active"


async def test_sync_facade_drives_storage(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    name = pool_name(lab, "sync")
    sync = SyncTaskomaticClient.wrapping(client)

    def web_request() -> list[str]:
        sync.create_pool(CreatePoolRequest(name=name, host=host.name,
                                           path=pool_path(lab, "sync"))).result(timeout=60)
        sync.create_volume(CreateVolumeRequest(pool=name, name="v", capacity="8MiB")
                           ).result(timeout=60)
        return [f"{v.pool}/{v.name}" for v in sync.volumes(name)]

    try:
        assert await asyncio.to_thread(web_request) == [f"{name}/v"]
        assert [p.name for p in await asyncio.to_thread(sync.pools, host.name)] == [name]
    finally:
        await asyncio.to_thread(sync.close)


async def test_a_foreign_volume_of_the_new_disks_name_is_left_alone(
        client: TaskomaticClient, lab: Lab) -> None:
    """A volume libvirt has but the inventory does not (made with virsh), of the name a new
    disk gets and another shape: the create fails on it (DuplicateVolume) and its undo must not
    delete it — the task never made it."""
    host = lab.host()
    pool = await _pool(client, lab, host, "foreign")
    vm = lab.vm_name("foreign")
    libvirt_pool = lab.hv.connection(host.uri).storagePoolLookupByName(pool)
    libvirt_pool.createXML(f"<volume><name>{vm}-disk0.qcow2</name><capacity unit='MiB'>64"
                           "</capacity><target><format type='qcow2'/></target></volume>", 0)
    task = await client.create_vm(CreateVmRequest(name=vm, disks=[
        DiskRequest(pool=pool, size="1GiB")]))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert failure.error_type == "DuplicateVolume", failure
    assert not [undo for undo in failure.compensated if undo.startswith("delete volume")]
    assert libvirt_volumes(lab, host, pool) == [f"{vm}-disk0.qcow2"]
    assert vm not in [v.name for v in await client.vms()]
    # The path replays; recorded, it guards the "keep-foreign-volume" patch from now on.
    history = await _history(client, task)
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure
    if os.environ.get("TASKOMATIC_RECORD_HISTORIES"):
        (Path(__file__).parent / "histories" / "CreateVm-foreign-volume.json").write_text(
            history.to_json())
