"""Storage on the lab's real libvirtd: a dir pool on disk, qcow2 volumes, a QEMU guest with a disk.

The test-driver suite (tests/test_storage.py) covers the tasks' logic; this one proves the XML,
qcow2 volumes and resizing on a real hypervisor and a real file system.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from lab_fixtures import QemuLab

from activities import storage_inventory
from activities.db import Database
from starter.client import TaskomaticClient
from taskomatic.models import CreateVmRequest, DestroyVmRequest, DiskRequest
from taskomatic.storage import (
    CreatePoolRequest,
    CreateVolumeRequest,
    DestroyPoolRequest,
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
        assert [p.name for p in storage_inventory.list_pools(db) if p.name == pool] == []
    finally:
        shutil.rmtree(path, ignore_errors=True)
