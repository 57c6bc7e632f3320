"""VMs with disks on the lab's real libvirtd hosts (QEMU TCG): a shared ``dir`` pool (every lab
host sees the same file system) is defined and started on every lab host; a Linux guest whose
qcow2 data disk is a volume of it migrates live and keeps counting; clearing a host moves the
VMs on shared storage and reports the one on local storage with its reason, as the dry run said.

tests/test_storage_moves.py runs the same rules on test-driver hosts.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import force_host_state
from lab_fixtures import QemuLab
from test_clear_host import placement

from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DestroyPoolRequest,
    DiskRequest,
    HostState,
    MigrateVmRequest,
    PlannedDisk,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

ROOT = Path("/var/lib/taskomatic/pools")  # the default pool root the worker allows


@pytest.fixture
async def pools(client: TaskomaticClient, qemu_lab: QemuLab) -> AsyncIterator[list[str]]:
    """Names of pools a test creates (on lab host 1); destroyed with their storage after it,
    once its guests are gone."""
    made: list[str] = []
    yield made
    qemu_lab.clear()
    for name in made:
        await (await client.destroy_pool(DestroyPoolRequest(name=name, delete=True))).result()
        shutil.rmtree(ROOT / name, ignore_errors=True)


async def make_pool(client: TaskomaticClient, qemu_lab: QemuLab, pools: list[str], label: str,
                    shared: bool) -> str:
    name = f"p-{qemu_lab.prefix}-{label}"
    pools.append(name)
    await (await client.create_pool(CreatePoolRequest(
        name=name, host=qemu_lab.host(1).name, path=str(ROOT / name), shared=shared))).result()
    return name


def counted_without_gaps(ticks: list[tuple[int, float]]) -> bool:
    """One guest, one counter: every tick once and in order, uptime always rising."""
    return ([n for n, _ in ticks] == list(range(1, len(ticks) + 1))
            and all(a < b for (_, a), (_, b) in itertools.pairwise(ticks)))


async def test_a_linux_guest_with_a_disk_on_a_shared_pool_migrates_live_and_keeps_counting(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, pools: list[str]) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    pool = await make_pool(client, qemu_lab, pools, "shared", shared=True)
    found = inventory.get_pool(db, pool)
    assert found is not None and found.pool.scope == "shared"
    assert {h.host: h.state for h in found.pool.hosts} == {h.name: "active"
                                                          for h in qemu_lab.hosts}
    for host in qemu_lab.hosts:
        assert qemu_lab.conn(host).storagePoolLookupByName(pool).isActive()
    # Made through the source: the destination's libvirt learns of it when the move refreshes.
    await (await client.create_volume(CreateVolumeRequest(
        pool=pool, name="data.qcow2", capacity="64MiB"))).result()
    disk = PlannedDisk(pool=pool, volume="data.qcow2", format="qcow2", target="vda",
                       host=source.name, host_uri=source.uri)
    guest = qemu_lab.start_linux_guest(source, "shared", record=True, disks=[disk])
    before, _ = await asyncio.to_thread(guest.wait_for_tick, 1)  # booted and counting

    result = await (await client.migrate_vm(MigrateVmRequest(name=guest.name))).result()
    assert result.host in (dest.name, qemu_lab.host(3).name) and result.state == "running"
    assert any(note.startswith("live") for note in result.notes), result.notes
    there = next(h for h in qemu_lab.hosts if h.name == result.host)
    assert qemu_lab.domains(source) == {} and qemu_lab.domains(there) == {guest.name: True}
    xml = qemu_lab.conn(there).lookupByName(guest.name).XMLDesc(0)
    assert f"pool='{pool}'" in xml and "volume='data.qcow2'" in xml
    await asyncio.to_thread(guest.wait_for_tick, before + 3)  # counting on the destination
    assert counted_without_gaps(guest.ticks())
    assert [(d.pool, d.volume, d.host) for d in inventory.vm_disks(db, guest.name).disks] == [
        (pool, "data.qcow2", there.name)]


async def test_clearing_a_host_moves_vms_on_shared_storage_and_reports_local_ones(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, pools: list[str]) -> None:
    src = qemu_lab.host(1)
    shared = await make_pool(client, qemu_lab, pools, "cs", shared=True)
    local = await make_pool(client, qemu_lab, pools, "cl", shared=False)
    names = {label: qemu_lab.vm_name(label) for label in ("onshared", "onlocal", "nodisk")}
    disks = {"onshared": [DiskRequest(pool=shared, size="64MiB")],
             "onlocal": [DiskRequest(pool=local, size="64MiB")], "nodisk": []}
    for label, name in names.items():
        await (await client.create_vm(CreateVmRequest(
            name=name, host=src.name, vcpus=1, memory_mib=64, start=True,
            disks=disks[label]))).result()
    try:
        dry = await (await client.clear_host(ClearHostRequest(host=src.name, dry_run=True))
                     ).result()
        plan = {m.vm: m for m in dry.plan}
        assert plan[names["onlocal"]].destination is None
        reason = plan[names["onlocal"]].reason or ""
        assert reason.startswith(f"not movable: its disks are in pool {local!r} (local to "
                                 f"{src.name})")
        assert {n for n, m in plan.items() if m.destination} == {names["onshared"],
                                                                  names["nodisk"]}

        cleared = await (await client.clear_host(ClearHostRequest(host=src.name))).result()
        outcomes = {o.vm: o for o in cleared.outcomes}
        assert cleared.state == HostState.MAINTENANCE_FAILED
        assert {n for n, o in outcomes.items() if o.outcome == "moved"} == {
            n for n, m in plan.items() if m.destination}
        assert outcomes[names["onlocal"]].outcome == "failed"
        assert reason in (outcomes[names["onlocal"]].reason or "")
        seen = placement(qemu_lab, db)
        assert seen[names["onlocal"]] == [src.name]
        assert seen[names["onshared"]] != [src.name] and seen[names["nodisk"]] != [src.name]
        moved = inventory.vm_disks(db, names["onshared"]).disks
        assert [(d.pool, d.host) for d in moved] == [(shared, seen[names["onshared"]][0])]
    finally:
        force_host_state(db, src.name, HostState.UP)
