"""Clusters in the starter library (mixed into ``TaskomaticClient``).

    cluster, created = await client.create_cluster(ClusterSpec(name="c1", hypervisor_type="qemu"))
    await client.add_host(HostSpec(name="kvm1", uri="qemu+tls://kvm1/system", cluster="c1"))
    clusters = await client.clusters()
    c1 = await client.cluster("c1")      # None if there is none of that name
    c1 = await client.change_cluster("c1", ClusterChange(vcpu_overcommit=2.0, weigher="pack"))
    gone = await client.delete_cluster("c1")   # refused while hosts belong to it

Creating, changing or deleting a cluster is one inventory transaction, not a task: it touches
no hypervisor.
"""

from __future__ import annotations

import asyncio

from starter.errors import refusals
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterChange, ClusterRecord, ClusterSpec


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

    async def change_cluster(self, name: str, change: ClusterChange) -> ClusterRecord | None:
        """Change a cluster's overcommit ratios and weigher (the fields ``change`` gives);
        returns the cluster as it now is, None if there is none of that name. Placement uses
        the new capacity at once. ``RequestError`` on ``vcpu_overcommit`` /
        ``memory_overcommit``, nothing changed, when a host would have less capacity than its
        VMs and reservations use."""
        with refusals():
            changed: ClusterRecord | None = await asyncio.to_thread(
                inventory.change_cluster, self.db, name, change)
        return changed

    async def delete_cluster(self, name: str) -> ClusterRecord | None:
        """Delete an empty cluster; returns it as it was, None if there is none of that name.
        ``RequestError`` on ``name`` for the default cluster, and while hosts belong to it or
        grants are scoped to it (naming them)."""
        with refusals():
            deleted: ClusterRecord | None = await asyncio.to_thread(
                inventory.delete_cluster, self.db, name)
        return deleted
