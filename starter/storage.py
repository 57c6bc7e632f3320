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
from typing import Any

from starter.tasks import TaskHandle, TaskKind
from taskomatic import inventory as inv
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreatePoolRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    PoolRecord,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    SetPoolAutostartRequest,
    TaskRequest,
    VolumeRecord,
)
from taskomatic.settings import Settings
from workflows.storage import (
    CreateStoragePool,
    CreateVolume,
    DeleteVolume,
    DestroyStoragePool,
    RefreshStoragePool,
    ResizeVolume,
    SetPoolAutostart,
)

STORAGE_KINDS: dict[str, TaskKind] = {
    "CreateStoragePool": TaskKind(CreateStoragePool, CreatePoolRequest, "pool-create"),
    "DestroyStoragePool": TaskKind(DestroyStoragePool, DestroyPoolRequest, "pool-destroy"),
    "RefreshStoragePool": TaskKind(RefreshStoragePool, RefreshPoolRequest, "pool-refresh"),
    "SetPoolAutostart": TaskKind(SetPoolAutostart, SetPoolAutostartRequest, "pool-autostart"),
    "CreateVolume": TaskKind(CreateVolume, CreateVolumeRequest, "volume-create"),
    "DeleteVolume": TaskKind(DeleteVolume, DeleteVolumeRequest, "volume-delete"),
    "ResizeVolume": TaskKind(ResizeVolume, ResizeVolumeRequest, "volume-resize"),
}


class StorageClientMixin:
    """Pool and volume calls of ``TaskomaticClient``."""

    db: Database
    settings: Settings
    _inventory: Callable[..., Awaitable[Any]]
    submit: Callable[..., Awaitable[TaskHandle]]
    checked: Callable[..., Awaitable[Any]]

    async def pools(self, host: str | None = None) -> list[PoolRecord]:
        return await asyncio.to_thread(inv.list_pools, self.db, host)

    async def volumes(self, pool: str | None = None) -> list[VolumeRecord]:
        return await asyncio.to_thread(inv.list_volumes, self.db, pool)

    async def create_pool(self, req: CreatePoolRequest, task_id: str | None = None
                          ) -> TaskHandle:
        return await self._storage_task("CreateStoragePool", req, task_id)

    async def destroy_pool(self, req: DestroyPoolRequest, task_id: str | None = None
                           ) -> TaskHandle:
        return await self._storage_task("DestroyStoragePool", req, task_id)

    async def refresh_pool(self, req: RefreshPoolRequest, task_id: str | None = None
                           ) -> TaskHandle:
        return await self._storage_task("RefreshStoragePool", req, task_id)

    async def set_pool_autostart(self, req: SetPoolAutostartRequest, task_id: str | None = None
                                 ) -> TaskHandle:
        return await self._storage_task("SetPoolAutostart", req, task_id)

    async def create_volume(self, req: CreateVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        return await self._storage_task("CreateVolume", req, task_id)

    async def delete_volume(self, req: DeleteVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        return await self._storage_task("DeleteVolume", req, task_id)

    async def resize_volume(self, req: ResizeVolumeRequest, task_id: str | None = None
                            ) -> TaskHandle:
        return await self._storage_task("ResizeVolume", req, task_id)

    async def _storage_task(self, kind: str, req: TaskRequest, task_id: str | None
                            ) -> TaskHandle:
        return await self.submit(kind, await self.checked(kind, req), task_id)

    async def check_storage(self, kind: str, req: Any) -> None:
        """The advisory inventory checks of a storage request (``RequestError`` naming the
        field); the task's plan phase checks again."""
        if kind == "CreateStoragePool":
            await self._inventory(inv.check_new_pool, self.db, req, self.settings.pool_roots)
        elif kind == "DestroyStoragePool":
            await self._inventory(inv.check_pool_unused, self.db, req.name)
        elif kind in ("RefreshStoragePool", "SetPoolAutostart"):
            await self._inventory(inv.require_pool, self.db, req.name)
        elif kind == "CreateVolume":
            await self._inventory(inv.check_new_volume, self.db, req.pool, req.name,
                                  req.clone_from)
        elif kind == "DeleteVolume":
            await self._inventory(inv.check_volume_unused, self.db, req.pool, req.name)
        elif kind == "ResizeVolume":
            await self._inventory(inv.require_volume, self.db, req.pool, req.name)
