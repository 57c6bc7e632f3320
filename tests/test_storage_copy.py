"""Moves with a storage copy (``--copy-storage``) on libvirt test-driver hosts, real Temporal and
PostgreSQL: the refusals and the dry run. Placement needs a destination with a local pool of the
disks' pool type with room (``takes_copies``); the test driver cannot migrate live, so the move
itself is refused before anything is made (the live copy is the lab's test,
tests/test_lab_storage_copy.py)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import libvirt
import pytest
from helpers import only_hosts_up
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from test_clear_host import host_result, placement
from test_migration import reservations
from test_replay import HISTORIES
from test_storage_moves import local_pool, vm_with_disk

from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor.jobs import migration_flags
from taskomatic.hypervisor.storage_copy import retarget_disks
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    HostRef,
    MigrateDomainInput,
    MigrateVmRequest,
    MigrationLimits,
    MoveStorage,
    PlannedMove,
    VolumeCopy,
)
from taskomatic.units import GIB
from workflows.kinds import TASK_WORKFLOWS


async def planned(client: TaskomaticClient, host: str, copy: bool) -> dict[str, PlannedMove]:
    dry = await host_result(client, await client.clear_host(ClearHostRequest(
        host=host, dry_run=True, copy_storage=copy)))
    return {m.vm: m for m in dry.plan}


async def refused(client: TaskomaticClient, req: MigrateVmRequest) -> TaskError:
    with pytest.raises(TaskError) as caught:
        await (await client.migrate_vm(req)).result()
    return caught.value


def volumes(lab: Lab, uri: str, pool: str) -> list[str]:
    return sorted(lab.hv.connection(uri).storagePoolLookupByName(pool).listVolumes())


@pytest.mark.asyncio
async def test_copy_storage_needs_a_local_pool_with_room_and_a_live_move(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    src, dst = lab.host(1), lab.host(2)
    with only_hosts_up(db, [src.name, dst.name]):
        pool = await local_pool(client, lab, src, "images")
        d1 = await vm_with_disk(client, lab, pool, "d1")
        disks_before = inventory.vm_disks(db, d1)

        # No local pool on the destination: the dry run and the move say why.
        plan = await planned(client, src.name, copy=True)
        assert plan[d1].destination is None
        assert (f"{dst.name}: has no local dir pool with room for 1GiB (takes_copies)"
                in (plan[d1].reason or ""))
        for pinned in (None, dst.name):
            failure = (await refused(client, MigrateVmRequest(
                name=d1, to=pinned, copy_storage=True))).failure
            assert (failure.error_type, failure.field, failure.vm) == (
                "HostNotAvailable" if pinned else "NoCapacity", "to", d1)
            assert "has no local dir pool with room for 1GiB" in failure.message

        # With one, the dry run plans the move; without the option it is still not movable.
        target = await local_pool(client, lab, dst, "copies")
        plan = await planned(client, src.name, copy=True)
        assert (plan[d1].destination, plan[d1].reason) == (dst.name, None)
        plan = await planned(client, src.name, copy=False)
        assert plan[d1].destination is None
        assert "allow a storage copy (--copy-storage)" in (plan[d1].reason or "")

        # A volume of that name in the destination pool is never taken over.
        volume = disks_before.disks[0].volume
        await (await client.create_volume(CreateVolumeRequest(
            pool=target, name=volume, capacity="1GiB"))).result()
        failure = (await refused(client, MigrateVmRequest(name=d1, copy_storage=True))).failure
        assert (failure.error_type, failure.field) == ("DuplicateVolume", "to")
        assert volumes(lab, dst.uri, target) == [volume]
        await (await client.delete_volume(DeleteVolumeRequest(pool=target, name=volume))).result()

        # The test driver cannot migrate live: refused, with the reason, before any copy.
        handle = await client.migrate_vm(MigrateVmRequest(name=d1, copy_storage=True))
        with pytest.raises(TaskError) as caught:
            await handle.result()
        failure = caught.value.failure
        assert (failure.error_type, failure.field, failure.vm) == ("NotMigratable",
                                                                   "copy_storage", d1)
        assert "needs a live migration" in failure.message
        assert volumes(lab, dst.uri, target) == []
        assert placement(lab, db)[d1] == [src.name]
        assert inventory.vm_disks(db, d1) == disks_before
        assert reservations(db, lab.vm_name("")) == []
    await replays(client, handle.id, "MigrateVm-copy-refused")


async def replays(client: TaskomaticClient, workflow_id: str, label: str) -> None:
    """The task's history replays on today's code; with TASKOMATIC_RECORD_HISTORIES set it is
    written to tests/histories/<label>.json, where test_replay replays it from then on."""
    history = await client.temporal.get_workflow_handle(workflow_id).fetch_history()
    replayer = Replayer(workflows=TASK_WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{label}: {result.replay_failure}"
    if os.environ.get("TASKOMATIC_RECORD_HISTORIES"):
        (HISTORIES / f"{label}.json").write_text(history.to_json())


# --- the migration call (pure) -------------------------------------------------------------------

COPY = VolumeCopy(target="vdb", source_pool="src-pool", volume="d1-1.qcow2", format="qcow2",
                  capacity=GIB, pool="dst-pool")
DOMAIN = ("<domain type='qemu'><name>d1</name><devices>"
          "<disk type='volume' device='disk'><source pool='shared' volume='root.qcow2'/>"
          "<target dev='vda' bus='virtio'/></disk>"
          "<disk type='file' device='disk'><source file='/srv/src-pool/d1-1.qcow2'/>"
          "<target dev='vdb' bus='virtio'/></disk></devices></domain>")


def test_the_destination_xml_puts_only_the_copied_disks_on_the_copies() -> None:
    disks = {}
    for disk in ET.fromstring(retarget_disks(DOMAIN, [COPY])).iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        assert target is not None and source is not None
        disks[target.get("dev")] = (disk.get("type"), source.attrib)
    assert disks == {"vda": ("volume", {"pool": "shared", "volume": "root.qcow2"}),
                     "vdb": ("volume", {"pool": "dst-pool", "volume": "d1-1.qcow2"})}
    with pytest.raises(ValueError, match="no disk with target vdc"):
        retarget_disks(DOMAIN, [COPY.model_copy(update={"target": "vdc"})])


def test_a_copy_migrates_the_copied_disks_with_non_shared_disk() -> None:
    a = HostRef(name="a", uri="qemu:///a")
    b = HostRef(name="b", uri="qemu:///b", migration_uri="tcp://127.0.0.1")
    plain = MigrateDomainInput(name="d1", source=a, destination=b, limits=MigrationLimits())
    flags, params = migration_flags(plain, live=True)
    assert not flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS not in params
    copying = plain.model_copy(update={"storage": MoveStorage(copies=[COPY])})
    flags, params = migration_flags(copying, live=True)
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK and flags & libvirt.VIR_MIGRATE_LIVE
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vdb"]
