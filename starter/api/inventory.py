"""Inventory routes: hosts (list, register), VMs, pools (list, show) and volumes, read straight
from the inventory through the starter library. A listing holds what the caller may read; one
object the caller may not read is 404 as a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field

from starter.api.auth import User, can_read, host_clusters, require
from starter.api.deps import Client, Db
from starter.api.errors import NOT_FOUND_RESPONSE, ApiError
from taskomatic.models import (
    HostRecord,
    HostSpec,
    Model,
    Name,
    PoolRecord,
    VmRecord,
    VolumeRecord,
    host_resource,
    pool_resource,
    vm_resource,
)

router = APIRouter(tags=["inventory"])


class HostAdded(Model):
    host: HostRecord
    added: bool
    shared_pool_tasks: list[str] = Field(
        default_factory=list, description="ids of the RefreshStoragePool tasks started to bring "
                                          "the cluster's shared pools to the host")


@router.get("/hosts", response_model=list[HostRecord])
async def list_hosts(user: User, client: Client) -> list[HostRecord]:
    hosts = await client.hosts()
    clusters = {h.name: h.cluster for h in hosts}
    return [h for h in hosts if can_read(user, [host_resource(h.name)], None, clusters)]


@router.post("/hosts", response_model=HostAdded)
async def add_host(spec: HostSpec, user: User, client: Client, db: Db,
                   probe: Annotated[bool, Query()] = True) -> HostAdded:
    """Register a hypervisor (``admin`` on the host); with ``probe`` its URI must answer.
    Registering the same host again is a no-op (``added`` false). As ``taskomatic host add``,
    the shared pools of its cluster it does not see yet are brought to it (one
    ``RefreshStoragePool`` task each, requested by the caller)."""
    await require(user, "admin", [host_resource(spec.name)], db)
    host, added = await client.add_host(spec, probe)
    shares = await client.share_pools(host.name, requested_by=user.subject)
    return HostAdded(host=host, added=added, shared_pool_tasks=[t.id for t in shares])


def _placed_readable(user: User, resource: str, host: str, clusters: dict[str, str]) -> bool:
    """Whether ``user`` may read ``resource``, which the inventory puts on ``host``."""
    return can_read(user, [resource], {resource: host}, clusters)


@router.get("/vms", response_model=list[VmRecord])
async def list_vms(user: User, client: Client, db: Db,
                   host: Annotated[Name | None, Query()] = None) -> list[VmRecord]:
    clusters = await host_clusters(user, db)
    return [vm for vm in await client.vms(host)
            if _placed_readable(user, vm_resource(vm.name), vm.host, clusters)]


@router.get("/pools", response_model=list[PoolRecord])
async def list_pools(user: User, client: Client, db: Db,
                     host: Annotated[Name | None, Query()] = None) -> list[PoolRecord]:
    clusters = await host_clusters(user, db)
    return [p for p in await client.pools(host)
            if _placed_readable(user, pool_resource(p.name), p.host, clusters)]


@router.get("/pools/{name}", response_model=PoolRecord, responses=NOT_FOUND_RESPONSE)
async def show_pool(name: Annotated[Name, Path()], user: User, client: Client, db: Db
                    ) -> PoolRecord:
    """One storage pool with the hosts that see it; 404 if there is none of that name or the
    caller may not read it."""
    pool = await client.pool(name)
    if pool is None or not _placed_readable(user, pool_resource(name), pool.host,
                                            await host_clusters(user, db)):
        raise ApiError(404, f"no pool named {name!r}", field="name")  # do not tell it exists
    return pool


@router.get("/volumes", response_model=list[VolumeRecord])
async def list_volumes(user: User, client: Client, db: Db,
                       pool: Annotated[Name | None, Query()] = None) -> list[VolumeRecord]:
    clusters = await host_clusters(user, db)
    return [v for v in await client.volumes(pool)
            if _placed_readable(user, pool_resource(v.pool), v.host, clusters)]
