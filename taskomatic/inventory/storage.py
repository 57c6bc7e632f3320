"""Storage inventory: pools and volumes per host, and which VM uses or owns each volume.

Pool names are unique across hosts (a pool is a resource of its own); a pool being created holds
its name with a row in state 'creating' until the task records it or its undo releases it.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors
from psycopg2.extras import Json

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreatePoolRequest,
    HostState,
    PoolPeers,
    PoolPlacement,
    PoolRecord,
    PoolRef,
    PoolScan,
    PoolType,
    RecordPoolHostInput,
    VolumeInfo,
    VolumePlacement,
    VolumeRecord,
    check_pool_path,
)

_POOLS = """
    SELECT p.name, h.name AS host, h.uri AS host_uri, p.type, p.path, p.state, p.autostart,
           p.capacity, p.allocation, p.available, p.scope, p.uuid::text AS uuid, p.source,
           (SELECT count(*) FROM storage_volumes v WHERE v.pool_id = p.id) AS volume_count,
           COALESCE((SELECT json_agg(json_build_object('host', sh.name, 'state', ph.state,
                                                       'detail', ph.detail) ORDER BY sh.name)
                     FROM pool_hosts ph JOIN hosts sh ON sh.id = ph.host_id
                     WHERE ph.pool_id = p.id), '[]') AS hosts
    FROM storage_pools p JOIN hosts h ON h.id = p.host_id
"""
_VOLUMES = """
    SELECT p.name AS pool, v.name, h.name AS host, h.uri AS host_uri, v.format, v.capacity,
           v.allocation, v.path, v.owner_vm, vm.name AS used_by
    FROM storage_volumes v JOIN storage_pools p ON p.id = v.pool_id
    JOIN hosts h ON h.id = p.host_id
    LEFT JOIN vm_disks d ON d.volume_id = v.id LEFT JOIN vms vm ON vm.id = d.vm_id
"""


def _pool(row: dict[str, Any]) -> PoolPlacement:
    uri = row.pop("host_uri")
    return PoolPlacement(pool=PoolRecord.model_validate(row), host_uri=uri)


def _volume(row: dict[str, Any]) -> VolumePlacement:
    uri = row.pop("host_uri")
    return VolumePlacement(volume=VolumeRecord.model_validate(row), host_uri=uri)


# --- pools -----------------------------------------------------------------------------------


def list_pools(db: Database, host: str | None = None) -> list[PoolRecord]:
    """Every pool, or those ``host`` has: its local pools and the shared pools it sees or
    failed to see (``pool_hosts``)."""
    with db.transaction() as cur:
        cur.execute(_POOLS + " WHERE %(host)s::text IS NULL OR h.name = %(host)s"
                    " OR EXISTS (SELECT 1 FROM pool_hosts ph JOIN hosts sh"
                    "  ON sh.id = ph.host_id WHERE ph.pool_id = p.id AND sh.name = %(host)s)"
                    " ORDER BY p.name", {"host": host})
        return [_pool(row).pool for row in cur.fetchall()]


def get_pool(db: Database, name: str) -> PoolPlacement | None:
    with db.transaction() as cur:
        cur.execute(_POOLS + " WHERE p.name = %s", (name,))
        row = cur.fetchone()
        return _pool(row) if row else None


def require_pool(db: Database, name: str, field: str = "name") -> PoolPlacement:
    found = get_pool(db, name)
    if found is None:
        raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {name!r}", field=field)
    if found.pool.state == "creating":
        raise task_error(ErrorType.INVALID_OPERATION, f"pool {name!r} is still being created",
                         field=field)
    return found


def check_new_pool(db: Database, req: CreatePoolRequest, roots: list[str]) -> None:
    """Refuse a pool create early (advisory: ``reserve_pool`` re-checks in one transaction)."""
    with db.transaction() as cur:
        _refuse_pool(cur, req, roots, task_id=None)


def reserve_pool(db: Database, task_id: str, req: CreatePoolRequest, roots: list[str]
                 ) -> PoolPlacement:
    """Hold the pool's name on its host for this task; idempotent for the same task."""
    try:
        with db.transaction() as cur:
            host = _refuse_pool(cur, req, roots, task_id)
            cur.execute(
                "INSERT INTO storage_pools (name, host_id, type, path, source, task_id, scope)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (req.name, host["id"], req.type.value, req.path,
                 Json(req.source.model_dump(mode="json")), task_id,
                 "shared" if req.shared else "local"))
            # A concurrent create of the same name may have committed first: checked again.
            _refuse_pool(cur, req, roots, task_id)
    except psycopg2.errors.UniqueViolation as err:
        raise task_error(ErrorType.DUPLICATE_POOL, f"path {req.path} is already used by another"
                         f" pool on {req.host}", field="path", host=req.host) from err
    found = get_pool(db, req.name)
    assert found is not None
    return found


def _refuse_pool(cur: Any, req: CreatePoolRequest, roots: list[str], task_id: str | None
                 ) -> dict[str, Any]:
    if req.type is not PoolType.LOGICAL:
        reason = check_pool_path(str(req.path), roots)
        if reason:
            raise task_error(ErrorType.INVALID_REQUEST, reason, field="path", host=req.host)
    cur.execute("SELECT id, state FROM hosts WHERE name = %s FOR UPDATE", (req.host,))
    host: dict[str, Any] | None = cur.fetchone()
    if host is None:
        raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {req.host!r}", field="host",
                         host=req.host)
    if host["state"] != HostState.UP:
        raise task_error(ErrorType.HOST_NOT_AVAILABLE,
                         f"host {req.host!r} is in state {host['state']!r}, not 'up'",
                         field="host", host=req.host)
    cur.execute("SELECT p.task_id, h.name AS host FROM storage_pools p"
                " JOIN hosts h ON h.id = p.host_id WHERE p.name = %s", (req.name,))
    row = cur.fetchone()
    if row and (task_id is None or row["task_id"] != task_id):
        where = f"being created by task {row['task_id']}" if row["task_id"] else "on " + row["host"]
        raise task_error(ErrorType.DUPLICATE_POOL, f"pool {req.name!r} already exists ({where})",
                         field="name", host=req.host)
    cur.execute("SELECT name FROM storage_pools WHERE host_id = %s AND path = %s AND name <> %s",
                (host["id"], req.path, req.name))
    row = cur.fetchone()
    if row:
        raise task_error(ErrorType.DUPLICATE_POOL,
                         f"path {req.path} is already pool {row['name']!r} on {req.host}",
                         field="path", host=req.host)
    return host


def release_pool(db: Database, task_id: str) -> bool:
    """Drop a name held by a pool create that did not finish."""
    with db.transaction() as cur:
        cur.execute("DELETE FROM storage_pools WHERE task_id = %s AND state = 'creating'",
                    (task_id,))
        return bool(cur.rowcount)


def record_pool(db: Database, scan: PoolScan, uuid: str | None = None) -> PoolRecord:
    """Record what libvirt reports of a pool (and its ``uuid`` when given); an active pool's
    volume list is reconciled (volumes gone from libvirt are forgotten unless a VM still has
    them attached), and its host is recorded as seeing it or not (``pool_hosts``)."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE storage_pools SET state = %s, autostart = %s, capacity = %s, allocation = %s,"
            " available = %s, task_id = NULL, uuid = COALESCE(%s::uuid, uuid),"
            " updated_at = now() WHERE name = %s RETURNING id",
            ("active" if scan.active else "inactive", bool(scan.autostart), scan.capacity,
             scan.allocation, scan.available, uuid, scan.name))
        row = cur.fetchone()
        if row is None:
            raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {scan.name!r}", field="name")
        set_pool_host(cur, row["id"], scan.host, "active" if scan.active else "inactive")
        if scan.active:
            for vol in scan.volumes:
                upsert_volume(cur, row["id"], vol, None)
            cur.execute("DELETE FROM storage_volumes v WHERE pool_id = %s"
                        " AND NOT (name = ANY(%s))"
                        " AND NOT EXISTS (SELECT 1 FROM vm_disks d WHERE d.volume_id = v.id)",
                        (row["id"], [v.name for v in scan.volumes]))
    found = get_pool(db, scan.name)
    assert found is not None
    return found.pool


def set_pool_host(cur: Any, pool_id: int, host: str, state: str, detail: str | None = None
                  ) -> None:
    """Record in ``pool_hosts`` whether ``host`` sees the pool: ``active`` (started there; what
    placement counts), ``inactive`` or ``failed`` (with ``detail``: why)."""
    cur.execute("INSERT INTO pool_hosts (pool_id, host_id, state, detail)"
                " SELECT %(pool)s, id, %(state)s, %(detail)s FROM hosts WHERE name = %(host)s"
                " ON CONFLICT (pool_id, host_id) DO UPDATE SET state = EXCLUDED.state,"
                " detail = EXCLUDED.detail, updated_at = now()",
                {"pool": pool_id, "host": host, "state": state, "detail": detail})


def record_pool_host(db: Database, inp: RecordPoolHostInput) -> PoolRecord:
    """Record whether ``inp.host`` sees pool ``inp.pool`` (``set_pool_host``); the pool."""
    with db.transaction() as cur:
        cur.execute("SELECT id FROM storage_pools WHERE name = %s", (inp.pool,))
        row = cur.fetchone()
        if row is None:
            raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {inp.pool!r}", field="name")
        set_pool_host(cur, row["id"], inp.host, inp.state, inp.detail)
    found = get_pool(db, inp.pool)
    assert found is not None
    return found.pool


def pool_peers(db: Database, name: str) -> PoolPeers:
    """The hosts a shared pool belongs on besides the host it was created from: every host in
    service (``up``) of that host's cluster. A local pool has none."""
    with db.transaction() as cur:
        cur.execute("SELECT h.name AS host, h.uri FROM storage_pools p JOIN hosts home"
                    " ON home.id = p.host_id JOIN hosts h ON h.id <> home.id"
                    " WHERE p.name = %s AND p.scope = 'shared' AND h.state = 'up'"
                    " AND h.cluster_id = home.cluster_id"
                    " ORDER BY h.name", (name,))
        return PoolPeers(pool=name, hosts=[PoolRef(host=r["host"], uri=r["uri"], name=name)
                                           for r in cur.fetchall()])


def pools_to_share(db: Database, host: str) -> list[str]:
    """The shared pools of ``host``'s cluster it does not see (active) yet: a host that joined
    since they were created, or where they failed."""
    with db.transaction() as cur:
        cur.execute("SELECT p.name FROM storage_pools p JOIN hosts home ON home.id = p.host_id"
                    " JOIN hosts h ON h.cluster_id = home.cluster_id AND h.name = %s"
                    " WHERE p.scope = 'shared' AND p.state <> 'creating' AND NOT EXISTS"
                    " (SELECT 1 FROM pool_hosts ph WHERE ph.pool_id = p.id AND ph.host_id = h.id"
                    "  AND ph.state = 'active') ORDER BY p.name", (host,))
        return [r["name"] for r in cur.fetchall()]


def set_pool_autostart(db: Database, name: str, autostart: bool) -> bool:
    with db.transaction() as cur:
        cur.execute("UPDATE storage_pools SET autostart = %s, updated_at = now()"
                    " WHERE name = %s AND autostart <> %s", (autostart, name, autostart))
        return bool(cur.rowcount)


def check_pool_unused(db: Database, name: str) -> PoolPlacement:
    """The pool, if no VM uses any of its volumes; else a StorageInUse error listing them."""
    found = require_pool(db, name)
    users = [v for v in list_volumes(db, name) if v.used_by]
    if users:
        listed = ", ".join(f"{v.name} (VM {v.used_by})" for v in users)
        raise task_error(ErrorType.STORAGE_IN_USE,
                         f"pool {name!r} has volumes in use: {listed}; destroy or detach those "
                         "VMs first", field="name", host=found.pool.host)
    return found


def remove_pool(db: Database, name: str) -> bool:
    """Forget a pool and its volumes (refused by the schema while a VM uses one)."""
    try:
        with db.transaction() as cur:
            cur.execute("DELETE FROM storage_pools WHERE name = %s", (name,))
            return bool(cur.rowcount)
    except psycopg2.errors.ForeignKeyViolation as err:
        raise task_error(ErrorType.STORAGE_IN_USE, f"pool {name!r} has volumes in use by a VM",
                         field="name") from err


# --- volumes ---------------------------------------------------------------------------------


def list_volumes(db: Database, pool: str | None = None) -> list[VolumeRecord]:
    with db.transaction() as cur:
        cur.execute(_VOLUMES + " WHERE %(pool)s::text IS NULL OR p.name = %(pool)s"
                    " ORDER BY p.name, v.name", {"pool": pool})
        return [_volume(row).volume for row in cur.fetchall()]


def get_volume(db: Database, pool: str, name: str) -> VolumePlacement | None:
    with db.transaction() as cur:
        cur.execute(_VOLUMES + " WHERE p.name = %s AND v.name = %s", (pool, name))
        row = cur.fetchone()
        return _volume(row) if row else None


def require_volume(db: Database, pool: str, name: str, field: str = "name") -> VolumePlacement:
    found = get_volume(db, pool, name)
    if found is None:
        raise task_error(ErrorType.UNKNOWN_VOLUME, f"no volume {pool}/{name}", field=field)
    return found


def check_new_volume(db: Database, pool: str, name: str, clone_from: str | None
                     ) -> PoolPlacement:
    """The pool a new volume goes into; refuses a taken name or a missing clone base."""
    found = require_pool(db, pool, field="pool")
    if get_volume(db, pool, name) is not None:
        raise task_error(ErrorType.DUPLICATE_VOLUME, f"volume {pool}/{name} already exists",
                         field="name", host=found.pool.host)
    if clone_from is not None:
        require_volume(db, pool, clone_from, field="clone_from")
    return found


def check_volume_unused(db: Database, pool: str, name: str) -> VolumePlacement:
    found = require_volume(db, pool, name)
    if found.volume.used_by:
        raise task_error(ErrorType.STORAGE_IN_USE, f"volume {pool}/{name} is attached to VM "
                         f"{found.volume.used_by!r}; destroy that VM first", field="name",
                         host=found.volume.host, vm=found.volume.used_by)
    return found


def record_volume(db: Database, pool: str, vol: VolumeInfo, owner_vm: str | None = None
                  ) -> VolumeRecord:
    with db.transaction() as cur:
        cur.execute("SELECT id FROM storage_pools WHERE name = %s", (pool,))
        row = cur.fetchone()
        if row is None:
            raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {pool!r}", field="pool")
        upsert_volume(cur, row["id"], vol, owner_vm)
    return require_volume(db, pool, vol.name).volume


def upsert_volume(cur: Any, pool_id: int, vol: VolumeInfo, owner_vm: str | None) -> None:
    cur.execute(
        "INSERT INTO storage_volumes (pool_id, name, format, capacity, allocation, path, owner_vm)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (pool_id, name) DO UPDATE SET"
        " format = EXCLUDED.format, capacity = EXCLUDED.capacity,"
        " allocation = EXCLUDED.allocation, path = EXCLUDED.path,"
        " owner_vm = COALESCE(EXCLUDED.owner_vm, storage_volumes.owner_vm), updated_at = now()",
        (pool_id, vol.name, vol.format, vol.capacity, vol.allocation, vol.path, owner_vm))


def remove_volume(db: Database, pool: str, name: str) -> bool:
    try:
        with db.transaction() as cur:
            cur.execute("DELETE FROM storage_volumes v USING storage_pools p"
                        " WHERE p.id = v.pool_id AND p.name = %s AND v.name = %s", (pool, name))
            return bool(cur.rowcount)
    except psycopg2.errors.ForeignKeyViolation as err:
        raise task_error(ErrorType.STORAGE_IN_USE, f"volume {pool}/{name} is attached to a VM",
                         field="name") from err
