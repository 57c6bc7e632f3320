"""Storage in the starter library: reads of pools and volumes (mixed into ``TaskomaticClient``).

    task = await client.create_pool(CreatePoolRequest(name="images", host="kvm1",
                                                      path="/var/lib/taskomatic/pools/images"))
    await task.result()
    await (await client.create_volume(CreateVolumeRequest(pool="images", name="base.qcow2",
                                                          capacity="10GiB"))).result()
    pools = await client.pools()

The task methods (``create_pool``, ``destroy_pool``, ``refresh_pool``, ``set_pool_autostart``,
``create_volume``, ``delete_volume``, ``resize_volume``) and their inventory checks come from
the registry of task kinds (``workflows.kinds``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starter.tasks import TaskHandle
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import PoolRecord, RefreshPoolRequest, VolumeRecord


class StorageReads:
    """Pool and volume reads of ``TaskomaticClient``, straight from the inventory."""

    db: Database

    refresh_pool: Callable[[RefreshPoolRequest], Awaitable[TaskHandle]]  # the client's task

    async def pools(self, host: str | None = None) -> list[PoolRecord]:
        """Every storage pool, or those on ``host``."""
        return await asyncio.to_thread(inventory.list_pools, self.db, host)

    async def pool(self, name: str) -> PoolRecord | None:
        """One storage pool (with the hosts that see it), or None if there is none of that
        name."""
        found = await asyncio.to_thread(inventory.get_pool, self.db, name)
        return found.pool if found else None

    async def share_pools(self, host: str, requested_by: str | None = None
                          ) -> list[TaskHandle]:
        """Bring the shared pools of ``host``'s cluster that it does not see yet to it (a host
        that just joined): one ``RefreshStoragePool`` task per pool, started and returned,
        requested by ``requested_by`` (default: the client's)."""
        names = await asyncio.to_thread(inventory.pools_to_share, self.db, host)
        return [await self.refresh_pool(RefreshPoolRequest(name=name, requested_by=requested_by))
                for name in names]

    async def volumes(self, pool: str | None = None) -> list[VolumeRecord]:
        """Every volume, or those of ``pool``."""
        return await asyncio.to_thread(inventory.list_volumes, self.db, pool)
