"""Storage in the starter library: pools and volumes, read from the inventory or changed by tasks.

    task = await client.create_pool(CreatePoolRequest(name="images", host="kvm1",
                                                      path="/var/lib/taskomatic/pools/images"))
    await task.result()
    await (await client.create_volume(CreateVolumeRequest(pool="images", name="base.qcow2",
                                                          capacity="10GiB"))).result()

Each request is checked against the inventory first (advisory; the task's plan phase re-checks),
so a bad one raises ``RequestError`` naming the field and starts nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from activities import storage_inventory as inv
from activities.db import Database
from taskomatic.models import TaskRequest
from taskomatic.settings import Settings
from taskomatic.storage import (
    CreatePoolRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    PoolRecord,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    SetPoolAutostartRequest,
    VolumeRecord,
)
from workflows.storage import (
    CreateStoragePool,
    CreateVolume,
    DeleteVolume,
    DestroyStoragePool,
    RefreshStoragePool,
    ResizeVolume,
    SetPoolAutostart,
)

if TYPE_CHECKING:
    from starter.client import TaskHandle

STORAGE_WORKFLOWS: dict[str, Any] = {
    "CreateStoragePool": CreateStoragePool, "DestroyStoragePool": DestroyStoragePool,
    "RefreshStoragePool": RefreshStoragePool, "SetPoolAutostart": SetPoolAutostart,
    "CreateVolume": CreateVolume, "DeleteVolume": DeleteVolume, "ResizeVolume": ResizeVolume,
}
STORAGE_SLUGS = {
    "CreateStoragePool": "pool-create", "DestroyStoragePool": "pool-destroy",
    "RefreshStoragePool": "pool-refresh", "SetPoolAutostart": "pool-autostart",
    "CreateVolume": "volume-create", "DeleteVolume": "volume-delete",
    "ResizeVolume": "volume-resize",
}


class StorageClientMixin:
    """Pool and volume calls of ``TaskomaticClient``."""

    db: Database
    settings: Settings
    _inventory: Callable[..., Awaitable[Any]]
    _start_task: Callable[..., Awaitable[TaskHandle]]

    async def pools(self, host: str | None = None) -> list[PoolRecord]:
        return await asyncio.to_thread(inv.list_pools, self.db, host)

    async def volumes(self, pool: str | None = None) -> list[VolumeRecord]:
        return await asyncio.to_thread(inv.list_volumes, self.db, pool)

    async def create_pool(self, req: CreatePoolRequest, task_id: str | None = None
                          ) -> TaskHandle:
        await self._inventory(inv.check_new_pool, self.db, req, self.settings.pool_roots)
        return await self._pool_task("CreateStoragePool", req, req.name, task_id)

    async def destroy_pool(self, req: DestroyPoolRequest, task_id: str | None = None
                           ) -> TaskHandle:
        await self._inventory(inv.check_pool_unused, self.db, req.name)
        return await self._pool_task("DestroyStoragePool", req, req.name, task_id)

    async def refresh_pool(self, req: RefreshPoolRequest, task_id: str | None = None
                           ) -> TaskHandle:
        await self._inventory(inv.require_pool, self.db, req.name)
        return await self._pool_task("RefreshStoragePool", req, req.name, task_id)

    async def set_pool_autostart(self, req: SetPoolAutostartRequest, task_id: str | None = None
                                 ) -> TaskHandle:
        await self._inventory(inv.require_pool, self.db, req.name)
        return await self._pool_task("SetPoolAutostart", req, req.name, task_id)

    async def create_volume(self, req: CreateVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        await self._inventory(inv.check_new_volume, self.db, req.pool, req.name, req.clone_from)
        return await self._pool_task("CreateVolume", req, f"{req.pool}-{req.name}", task_id)

    async def delete_volume(self, req: DeleteVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        await self._inventory(inv.check_volume_unused, self.db, req.pool, req.name)
        return await self._pool_task("DeleteVolume", req, f"{req.pool}-{req.name}", task_id)

    async def resize_volume(self, req: ResizeVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        await self._inventory(inv.require_volume, self.db, req.pool, req.name)
        return await self._pool_task("ResizeVolume", req, f"{req.pool}-{req.name}", task_id)

    async def _pool_task(self, kind: str, req: TaskRequest, label: str, task_id: str | None
                         ) -> TaskHandle:
        return await self._start_task(kind, req, label, task_id)
