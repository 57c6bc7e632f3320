"""Cluster routes: list, show, create, change and delete clusters, straight to the inventory
through the starter library (none of them is a task).

Authorization, as for hosts: a cluster is the resource ``cluster:NAME``
(``taskomatic.models.cluster_resource``), covered by a grant on ``*`` or on ``cluster:NAME``
(``taskomatic.access``). Reads need ``read`` on it — a listing holds the clusters the caller
may read, and a cluster it may not read is 404 as a missing one; creating, changing and
deleting need ``admin`` on it (as registering a host needs ``admin`` on the host).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from starter.api.auth import User, can_read, require
from starter.api.deps import Client, Db
from starter.api.errors import NOT_FOUND_RESPONSE, ApiError
from taskomatic.models import (
    ClusterChange,
    ClusterRecord,
    ClusterSpec,
    Model,
    Name,
    cluster_resource,
)

router = APIRouter(tags=["clusters"])


class ClusterCreated(Model):
    """``POST /clusters``: the cluster, and whether this request created it (false: it existed
    already with the same settings)."""

    cluster: ClusterRecord
    created: bool


def _no_cluster(name: str) -> ApiError:
    return ApiError(404, f"no cluster named {name!r}", field="name")


@router.get("/clusters", response_model=list[ClusterRecord])
async def list_clusters(user: User, client: Client) -> list[ClusterRecord]:
    """The clusters the caller may read, by name, with their hosts and their capacity and use
    added up (vCPUs, MiB)."""
    return [c for c in await client.clusters() if can_read(user, [cluster_resource(c.name)])]


@router.get("/clusters/{name}", response_model=ClusterRecord, responses=NOT_FOUND_RESPONSE)
async def show_cluster(name: Annotated[Name, Path()], user: User, client: Client
                       ) -> ClusterRecord:
    """One cluster; 404 if there is none of that name or the caller may not read it."""
    found = await client.cluster(name)
    if found is None or not can_read(user, [cluster_resource(name)]):
        raise _no_cluster(name)  # do not tell it exists
    return found


@router.post("/clusters", response_model=ClusterCreated)
async def create_cluster(spec: ClusterSpec, user: User, client: Client, db: Db
                         ) -> ClusterCreated:
    """Create a cluster (``admin`` on it). The same spec again is a no-op (``created``
    false); a name taken with other settings is 400 on ``name``."""
    await require(user, "admin", [cluster_resource(spec.name)], db)
    cluster, created = await client.create_cluster(spec)
    return ClusterCreated(cluster=cluster, created=created)


@router.patch("/clusters/{name}", response_model=ClusterRecord, responses=NOT_FOUND_RESPONSE)
async def change_cluster(name: Annotated[Name, Path()], change: ClusterChange, user: User,
                         client: Client, db: Db) -> ClusterRecord:
    """Change a cluster's overcommit ratios and weigher (``admin`` on it; the fields given).
    400 on ``vcpu_overcommit`` / ``memory_overcommit``, nothing changed, when a host would
    have less capacity than its VMs and reservations use; 404 if there is no such cluster."""
    await require(user, "admin", [cluster_resource(name)], db)
    changed = await client.change_cluster(name, change)
    if changed is None:
        raise _no_cluster(name)
    return changed


@router.delete("/clusters/{name}", response_model=ClusterRecord, responses=NOT_FOUND_RESPONSE)
async def delete_cluster(name: Annotated[Name, Path()], user: User, client: Client, db: Db
                         ) -> ClusterRecord:
    """Delete a cluster (``admin`` on it); answers it as it was. 400 on ``name`` for the
    default cluster and while hosts belong to it or grants are scoped to it (naming them);
    404 if there is no such cluster."""
    await require(user, "admin", [cluster_resource(name)], db)
    deleted = await client.delete_cluster(name)
    if deleted is None:
        raise _no_cluster(name)
    return deleted
