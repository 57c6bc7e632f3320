"""Storage on the lab's real libvirtd: a dir pool on disk, qcow2 volumes, a QEMU guest with a disk.

The test-driver suite (tests/test_storage.py) covers the tasks' logic; this one proves the XML,
qcow2 volumes and resizing on a real hypervisor and a real file system, and that the refusals
and undos of the failure paths hold there too: a real failed build defines no pool (and leaves
what was on disk alone), a pool a VM uses is not destroyed, and a VM whose boot fails leaves no
disk file behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from lab_fixtures import QemuLab

from lab.models import LabHost
from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    DiskRequest,
    ResizeVolumeRequest,
)

pytestmark = pytest.mark.lab

GIB = 1024**3
ROOT = Path("/var/lib/taskomatic/pools")  # the default pool root the worker allows


def _image(path: Path) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, timeout=30, check=True)
    info: dict[str, object] = json.loads(done.stdout)
    return info


async def test_dir_pool_qcow2_volumes_and_a_guest_with_a_disk(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    host = qemu_lab.host(1)
    pool = f"labpool-{uuid.uuid4().hex[:6]}"
    path = ROOT / pool
    try:
        made = await (await client.create_pool(CreatePoolRequest(
            name=pool, host=host.name, path=str(path)))).result()
        assert made.headline() and path.is_dir()
        conn = qemu_lab.conn(host)
        assert conn.storagePoolLookupByName(pool).isActive()

        await (await client.create_volume(CreateVolumeRequest(
            pool=pool, name="data.qcow2", capacity="1GiB"))).result()
        data = path / "data.qcow2"
        assert _image(data)["format"] == "qcow2" and _image(data)["virtual-size"] == GIB
        await (await client.resize_volume(ResizeVolumeRequest(
            pool=pool, name="data.qcow2", capacity="2GiB"))).result()
        assert _image(data)["virtual-size"] == 2 * GIB

        vm = qemu_lab.vm_name("disk")
        created = await (await client.create_vm(CreateVmRequest(
            name=vm, vcpus=1, memory_mib=64, start=True,
            disks=[DiskRequest(volume=f"{pool}/data.qcow2"),
                   DiskRequest(pool=pool, size="512MiB")]))).result()
        assert (created.host, created.state) == (host.name, "running")
        owned = path / f"{vm}-disk1.qcow2"
        assert _image(owned)["virtual-size"] == 512 * 1024**2
        xml = conn.lookupByName(vm).XMLDesc(0)
        assert xml.count("<disk type='volume'") == 2 and f"pool='{pool}'" in xml

        await (await client.destroy_vm(DestroyVmRequest(name=vm))).result()
        assert not owned.exists() and data.exists()  # owned disk deleted, the other kept
        assert qemu_lab.domains(host) == {}
        await (await client.destroy_pool(DestroyPoolRequest(name=pool, delete=True))).result()
        assert not path.exists()
        assert pool not in [p.name() for p in conn.listAllStoragePools(0)]
        assert [p.name for p in inventory.list_pools(db) if p.name == pool] == []
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pools(qemu_lab: QemuLab, host: LabHost) -> list[str]:
    return [p.name() for p in qemu_lab.conn(host).listAllStoragePools(0)]


async def test_a_pool_over_a_file_fails_fast_is_undone_and_leaves_the_file(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    host = qemu_lab.host(1)
    pool = f"labpool-{uuid.uuid4().hex[:6]}"
    path = ROOT / pool
    ROOT.mkdir(parents=True, exist_ok=True)
    path.write_text("somebody's file, not a directory\n")
    try:
        with pytest.raises(TaskError) as failed:
            await (await client.create_pool(CreatePoolRequest(
                name=pool, host=host.name, path=str(path)))).result()
        # libvirt's dir build accepts any existing path; starting the pool finds the file.
        failure = failed.value.failure
        assert (failure.step, failure.error_type, failure.host) == (
            "start pool", "HypervisorError", host.name)
        assert "Not a directory" in failure.message and not failure.retryable
        assert failure.compensated == ["stop pool", "undefine pool", "release pool name"]
        # libvirt will not remove a file as pool storage: reported, for a look by hand.
        assert failure.compensation_failed == ["delete pool storage"]
        assert pool not in _pools(qemu_lab, host)
        assert inventory.get_pool(db, pool) is None
        assert path.read_text() == "somebody's file, not a directory\n"
    finally:
        path.unlink(missing_ok=True)


async def test_a_pool_in_use_is_kept_and_a_failed_boot_leaves_no_disk_file(
        client: TaskomaticClient, failing_start_client: TaskomaticClient, qemu_lab: QemuLab,
        db: Database) -> None:
    host = qemu_lab.host(1)
    pool = f"labpool-{uuid.uuid4().hex[:6]}"
    path = ROOT / pool
    try:
        await (await client.create_pool(CreatePoolRequest(
            name=pool, host=host.name, path=str(path)))).result()
        vm = qemu_lab.vm_name("user")
        await (await client.create_vm(CreateVmRequest(
            name=vm, vcpus=1, memory_mib=64, start=True,
            disks=[DiskRequest(pool=pool, size="64MiB")]))).result()
        owned = path / f"{vm}-disk0.qcow2"
        assert owned.is_file()

        # In use: refused before a task exists, and by the task past that check.
        with pytest.raises(RequestError) as refused:
            await client.destroy_pool(DestroyPoolRequest(name=pool, delete=True))
        assert refused.value.field == "name" and vm in str(refused.value)
        raced = await client.submit("DestroyStoragePool", DestroyPoolRequest(name=pool,
                                                                             delete=True))
        with pytest.raises(TaskError) as in_use:
            await raced.result()
        assert in_use.value.failure.error_type == "StorageInUse"
        assert qemu_lab.conn(host).storagePoolLookupByName(pool).isActive()
        assert owned.is_file() and qemu_lab.domains(host) == {vm: True}

        # A guest whose boot fails: its new disk, a real qcow2 file, is deleted by the undo.
        doomed = qemu_lab.vm_name("doomed")
        with pytest.raises(TaskError) as failed:
            await (await failing_start_client.create_vm(CreateVmRequest(
                name=doomed, vcpus=1, memory_mib=64, start=True,
                disks=[DiskRequest(pool=pool, size="64MiB")]))).result()
        assert failed.value.failure.compensated == [
            "undefine domain", f"delete volume {pool}/{doomed}-disk0.qcow2", "release capacity"]
        assert not (path / f"{doomed}-disk0.qcow2").exists()
        assert sorted(f.name for f in path.iterdir()) == [owned.name]
        assert doomed not in qemu_lab.domains(host)

        await (await client.destroy_vm(DestroyVmRequest(name=vm))).result()
        await (await client.destroy_pool(DestroyPoolRequest(name=pool, delete=True))).result()
        assert not path.exists() and pool not in _pools(qemu_lab, host)
    finally:
        shutil.rmtree(path, ignore_errors=True)

