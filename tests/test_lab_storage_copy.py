"""A move with a storage copy on the lab's real libvirtd hosts (QEMU TCG): a Linux guest whose
qcow2 data disk is a volume of a pool local to its host migrates live with ``vm migrate
--copy-storage`` (``VIR_MIGRATE_NON_SHARED_DISK``) into a local pool of the destination, keeps
counting, and ends with the inventory on the destination volume and the source volume deleted.

Every lab host sees the same file system, so each local pool has a directory of its own and the
copy's path differs from the source's. tests/test_storage_copy.py has the refusals and dry run.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
from helpers import force_host_state
from lab_fixtures import QemuLab
from test_cancellation import at_step, ends_cancelled
from test_clear_host import placement
from test_lab_cancellation import SLOW
from test_lab_shared_storage import ROOT, counted_without_gaps, make_pool, pools
from test_storage_copy import replays

from lab.guests import LinuxGuest
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DiskRequest,
    HostState,
    MigrateVmRequest,
    PlannedDisk,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]
__all__ = ["pools"]  # the fixture, used by name


@dataclass
class OnLocalPool:
    """A running, counting Linux guest on lab host 1 whose qcow2 data disk is ``local``/
    ``data.qcow2`` (at ``source_path``); ``there``: an empty local pool of lab host 2."""

    guest: LinuxGuest
    ticks: int
    local: str
    there: str
    source_path: str


async def guest_on_local_pool(client: TaskomaticClient, qemu_lab: QemuLab, pools: list[str]
                              ) -> OnLocalPool:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    local = await make_pool(client, qemu_lab, pools, "local", shared=False)
    there = f"p-{qemu_lab.prefix}-there"
    pools.append(there)
    await (await client.create_pool(CreatePoolRequest(
        name=there, host=dest.name, path=str(ROOT / there)))).result()
    await (await client.create_volume(CreateVolumeRequest(
        pool=local, name="data.qcow2", capacity="64MiB"))).result()
    source_path = str(ROOT / local / "data.qcow2")
    assert os.path.exists(source_path)
    disk = PlannedDisk(pool=local, volume="data.qcow2", format="qcow2", target="vda",
                       host=source.name, host_uri=source.uri)
    guest = qemu_lab.start_linux_guest(source, "copy", record=True, disks=[disk])
    ticks, _ = await asyncio.to_thread(guest.wait_for_tick, 1)  # booted and counting
    return OnLocalPool(guest, ticks, local, there, source_path)


async def test_a_linux_guest_on_a_local_pool_moves_live_with_a_storage_copy(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, pools: list[str]) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    on = await guest_on_local_pool(client, qemu_lab, pools)
    guest, before, local, there, source_path = (on.guest, on.ticks, on.local, on.there,
                                                on.source_path)
    handle = await client.migrate_vm(MigrateVmRequest(name=guest.name, copy_storage=True))
    result = await handle.result()
    assert (result.host, result.state) == (dest.name, "running"), result.notes
    assert any(note.startswith("live") for note in result.notes), result.notes
    assert "1 disk(s) copied" in result.notes, result.notes
    assert qemu_lab.domains(source) == {} and qemu_lab.domains(dest) == {guest.name: True}
    xml = qemu_lab.conn(dest).lookupByName(guest.name).XMLDesc(0)
    assert f"pool='{there}'" in xml and "volume='data.qcow2'" in xml
    await asyncio.to_thread(guest.wait_for_tick, before + 3)  # counting on the destination
    assert counted_without_gaps(guest.ticks())
    assert [(d.pool, d.volume, d.host) for d in inventory.vm_disks(db, guest.name).disks] == [
        (there, "data.qcow2", dest.name)]
    assert inventory.get_volume(db, local, "data.qcow2") is None
    assert not os.path.exists(source_path)
    assert os.path.exists(ROOT / there / "data.qcow2")
    assert "data.qcow2" not in qemu_lab.conn(source).storagePoolLookupByName(local).listVolumes()

    # The copy's steps replay; recorded, they guard the patch "i13-copy-storage".
    await replays(client, handle.id, "MigrateVm-copy-storage")


async def test_a_cancelled_move_with_a_storage_copy_deletes_the_copy(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, pools: list[str]) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    on = await guest_on_local_pool(client, qemu_lab, pools)
    disks_before = inventory.vm_disks(db, on.guest.name)
    move = await client.migrate_vm(MigrateVmRequest(name=on.guest.name, copy_storage=True,
                                                    limits=SLOW))
    await at_step(move, f"migrate to {dest.name}")
    assert os.path.exists(ROOT / on.there / "data.qcow2")  # the copy, made first
    await asyncio.sleep(2)
    await client.cancel(move.id)
    await ends_cancelled(move)
    assert qemu_lab.domains(source) == {on.guest.name: True} and qemu_lab.domains(dest) == {}
    await asyncio.to_thread(on.guest.wait_for_tick, on.ticks + 2)  # still counting
    assert not os.path.exists(ROOT / on.there / "data.qcow2")
    assert qemu_lab.conn(dest).storagePoolLookupByName(on.there).listVolumes() == []
    assert os.path.exists(on.source_path)
    assert inventory.vm_disks(db, on.guest.name) == disks_before
    assert placement(qemu_lab, db)[on.guest.name] == [source.name]


async def test_clearing_a_host_with_copy_storage_moves_vms_on_local_pools_as_planned(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, pools: list[str]) -> None:
    src, dest = qemu_lab.host(1), qemu_lab.host(2)
    local = await make_pool(client, qemu_lab, pools, "cl", shared=False)
    there = f"p-{qemu_lab.prefix}-cthere"  # the only local pool of another host
    pools.append(there)
    await (await client.create_pool(CreatePoolRequest(
        name=there, host=dest.name, path=str(ROOT / there)))).result()
    onlocal, nodisk = qemu_lab.vm_name("onlocal"), qemu_lab.vm_name("nodisk")
    for name, disks in ((onlocal, [DiskRequest(pool=local, size="64MiB")]), (nodisk, [])):
        await (await client.create_vm(CreateVmRequest(
            name=name, host=src.name, vcpus=1, memory_mib=64, start=True,
            disks=disks))).result()
    [volume] = [d.volume for d in inventory.vm_disks(db, onlocal).disks]
    try:
        dry = await (await client.clear_host(ClearHostRequest(
            host=src.name, dry_run=True, copy_storage=True))).result()
        plan = {m.vm: m.destination for m in dry.plan}
        assert plan[onlocal] == dest.name and plan[nodisk] is not None, dry.plan

        cleared = await (await client.clear_host(ClearHostRequest(
            host=src.name, copy_storage=True))).result()
        assert cleared.state == HostState.MAINTENANCE, cleared.outcomes
        outcomes = {o.vm: o for o in cleared.outcomes}
        assert {n: o.outcome for n, o in outcomes.items()} == {onlocal: "moved", nodisk: "moved"}
        assert outcomes[onlocal].destination == dest.name
        assert placement(qemu_lab, db)[onlocal] == [dest.name]
        assert [(d.pool, d.volume, d.host) for d in inventory.vm_disks(db, onlocal).disks] == [
            (there, volume, dest.name)]
        assert inventory.get_volume(db, local, volume) is None
        assert not os.path.exists(ROOT / local / volume)
    finally:
        force_host_state(db, src.name, HostState.UP)
