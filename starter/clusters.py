"""Clusters in the starter library (mixed into ``TaskomaticClient``).

    cluster, created = await client.create_cluster(ClusterSpec(name="c1", hypervisor_type="qemu"))
    await client.add_host(HostSpec(name="kvm1", uri="qemu+tls://kvm1/system", cluster="c1"))
    clusters = await client.clusters()
    c1 = await client.cluster("c1")      # None if there is none of that name

Creating a cluster is one inventory transaction, not a task: it touches no hypervisor.
"""

from __future__ import annotations

import asyncio

from starter.errors import refusals
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterRecord, ClusterSpec


class ClusterCalls:
    """Cluster calls of ``TaskomaticClient``, straight to the inventory."""

    db: Database

    async def create_cluster(self, spec: ClusterSpec) -> tuple[ClusterRecord, bool]:
        """Create a cluster; returns (cluster, created). The same spec again is a no-op; a name
        taken with other settings is ``RequestError`` on ``name``."""
        with refusals():
            created: tuple[ClusterRecord, bool] = await asyncio.to_thread(
                inventory.create_cluster, self.db, spec)
        return created

    async def clusters(self) -> list[ClusterRecord]:
        """Every cluster with its hosts and their capacity and use, by name."""
        return await asyncio.to_thread(inventory.list_clusters, self.db)

    async def cluster(self, name: str) -> ClusterRecord | None:
        """One cluster, or None if there is none of that name."""
        return await asyncio.to_thread(inventory.get_cluster, self.db, name)
