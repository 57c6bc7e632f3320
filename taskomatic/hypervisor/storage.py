"""Storage pools and volumes in libvirt: lookups that say "absent" instead of raising, the checks
the pool and volume actions share, and volume descriptions.

A ``PoolRef`` with a UUID names one pool definition: a pool of the same name with another UUID
(made by some other definition) is foreign, and is treated as absent, so an undo never stops,
deletes or undefines it.

Before storage is destroyed, libvirt is asked who uses it (``refuse_users``), not only the
inventory: a guest defined behind taskomatic's back keeps its disks.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import libvirt

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.connections import Hypervisors, power_state
from taskomatic.hypervisor.domain_xml import disk_sources
from taskomatic.hypervisor.pool_xml import pool_shape, volume_info
from taskomatic.models import HostRef, PoolRef, PoolType, VolumeInfo, VolumeRef

if TYPE_CHECKING:
    from temporalio.exceptions import ApplicationError

T = TypeVar("T")


def lookup_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    """The storage pool called ``name``, or None if the hypervisor has none."""
    return _absent_as_none(conn.storagePoolLookupByName, name, libvirt.VIR_ERR_NO_STORAGE_POOL)


def lookup_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    """The volume called ``name`` in ``pool`` (an active one), or None if it has none."""
    return _absent_as_none(pool.storageVolLookupByName, name, libvirt.VIR_ERR_NO_STORAGE_VOL)


def _absent_as_none(find: Callable[[str], T], name: str, absent: int) -> T | None:
    """``find(name)``, or None where libvirt answers with the error code ``absent``."""
    try:
        return find(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == absent:
            return None
        raise


def is_foreign(pool: libvirt.virStoragePool, ref: PoolRef) -> bool:
    """True if ``ref`` names the pool by UUID and libvirt's pool of that name is another one."""
    return ref.uuid is not None and pool.UUIDString() != ref.uuid


def lookup_own_pool(conn: libvirt.virConnect, ref: PoolRef) -> libvirt.virStoragePool | None:
    """The pool ``ref`` names, or None if there is none of that name or it is foreign."""
    pool = lookup_pool(conn, ref.name)
    if pool is None or is_foreign(pool, ref):
        return None
    return pool


def unknown_pool(ref: PoolRef) -> ApplicationError:
    """The ``UnknownPool`` error of a pool ``ref`` that is absent (or foreign)."""
    return task_error(ErrorType.UNKNOWN_POOL, f"no pool {ref.name!r} on {ref.host}",
                      host=ref.host)


def require_pool(conn: libvirt.virConnect, ref: PoolRef) -> libvirt.virStoragePool:
    """The pool ``ref`` names. Errors: ``UnknownPool`` if absent or foreign."""
    pool = lookup_own_pool(conn, ref)
    if pool is None:
        raise unknown_pool(ref)
    return pool


def require_active_pool(conn: libvirt.virConnect, ref: VolumeRef) -> libvirt.virStoragePool:
    """The pool of the volume ``ref``, which must be active (volumes are reachable only then).

    Errors: ``UnknownPool`` if absent, ``InvalidOperation`` if inactive (both on field ``pool``).
    """
    pool = lookup_pool(conn, ref.pool)
    if pool is None:
        raise task_error(ErrorType.UNKNOWN_POOL, f"no pool {ref.pool!r} on {ref.host}",
                         field="pool", host=ref.host)
    if not pool.isActive():
        raise task_error(ErrorType.INVALID_OPERATION,
                         f"pool {ref.pool!r} on {ref.host} is not active", field="pool",
                         host=ref.host)
    return pool


def build_flags(conn: libvirt.virConnect, pool_type: str) -> int:
    """The ``virStoragePool.build`` flags: a volume group is never overwritten (building over
    existing labels fails instead); the test driver, which writes nothing, takes no flags."""
    overwrite_guard = pool_type == PoolType.LOGICAL and conn.getType() != "TEST"
    return libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE if overwrite_guard else 0


def describe_volume(vol: libvirt.virStorageVol) -> VolumeInfo:
    """A volume's name, path and format, with its capacity and allocation in bytes."""
    _type, capacity, allocation = vol.info()
    return volume_info(vol.name(), vol.XMLDesc(0), capacity, allocation)


# Pools whose volumes are files other hosts may reach too (the same path on shared storage).
SHARED_POOL_TYPES = frozenset({PoolType.DIR.value, PoolType.NETFS.value})


class StorageTarget(NamedTuple):
    """Storage a step is about to destroy: volumes of pool ``pool`` (of type ``pool_type``;
    name → path), or with ``volumes`` None all of it (every path under its target path
    ``root``). With ``by_path`` False only disks that name the pool count (stopping or
    undefining a pool leaves its files, but a disk that names the pool no longer resolves)."""

    pool: str
    pool_type: str
    root: str
    volumes: Mapping[str, str] | None = None
    by_path: bool = True

    @property
    def shared(self) -> bool:
        """True if other hosts may use these files too: a dir or netfs pool, checked by path."""
        return self.by_path and self.pool_type in SHARED_POOL_TYPES

    def holds(self, path: str) -> bool:
        """True if ``path`` is (inside) this storage."""
        if not self.by_path:
            return False
        path = posixpath.normpath(path)
        if self.volumes is None:
            return path.startswith(posixpath.normpath(self.root) + "/")
        return path in {posixpath.normpath(p) for p in self.volumes.values()}

    def named_by(self, pool: str, volume: str) -> bool:
        """True if a disk naming ``pool``/``volume`` on the pool's own host is this storage."""
        return pool == self.pool and (self.volumes is None or volume in self.volumes)

    @classmethod
    def of(cls, pool: libvirt.virStoragePool, volumes: Sequence[libvirt.virStorageVol] | None,
           *, by_path: bool = True) -> StorageTarget:
        """The target of ``volumes`` of ``pool`` (None: the whole pool)."""
        _uuid, pool_type, root = pool_shape(pool.XMLDesc(0))
        named = None if volumes is None else {v.name(): v.path() for v in volumes}
        return cls(pool.name(), pool_type, root, named, by_path)


def storage_users(conn: libvirt.virConnect, target: StorageTarget, *, pool_host: bool
                  ) -> list[str]:
    """Every domain defined on ``conn`` (running or not) that uses ``target``, as ``NAME
    (STATE)``: a disk or backing file at such a path, or naming a volume of a pool of this host
    whose target path puts it there; on the pool's own host (``pool_host``) any disk naming the
    pool (and one of the volumes). Errors: ``libvirt.libvirtError``."""
    roots: dict[str, str | None] = {}
    users: list[str] = []
    for dom in conn.listAllDomains():
        try:
            sources = disk_sources(dom.XMLDesc(0))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined while we looked: it uses nothing any more
            raise
        for src in sources:
            if src.path is not None:
                hit = target.holds(src.path)
            else:
                pool, volume = str(src.pool), str(src.volume)
                if pool not in roots:
                    roots[pool] = _pool_root(conn, pool)
                root = roots[pool]
                hit = ((pool_host and target.named_by(pool, volume))
                       or (root is not None and target.holds(posixpath.join(root, volume))))
            if hit:
                users.append(f"{dom.name()} ({power_state(dom)})")
                break
    return users


def _pool_root(conn: libvirt.virConnect, name: str) -> str | None:
    pool = lookup_pool(conn, name)
    return pool_shape(pool.XMLDesc(0))[2] if pool is not None else None


def refuse_users(hv: Hypervisors, conn: libvirt.virConnect, host: str, target: StorageTarget,
                 others: Sequence[HostRef], what: str) -> None:
    """Raise ``StorageInUse`` naming every domain that uses ``target``: on the pool's ``host``
    (``conn``), and if ``target.shared`` on each of ``others``. ``what`` names the storage in
    the message. Errors: a host of ``others`` that cannot be asked raises as typed by
    ``Hypervisors.call`` (unused is not assumed); ``libvirt.libvirtError`` from ``conn``."""
    users = [f"{u} on {host}" for u in storage_users(conn, target, pool_host=True)]
    if target.shared:
        for other in others:
            with hv.call(f"look for users of {what} on", other.uri, other.name) as peer:
                users += [f"{u} on {other.name}"
                          for u in storage_users(peer, target, pool_host=False)]
    if users:
        raise task_error(ErrorType.STORAGE_IN_USE,
                         f"{what} on {host} is used by domain {', '.join(users)}; nothing done",
                         host=host)


def refresh_pools(hv: Hypervisors, host: HostRef, names: Sequence[str]) -> None:
    """Refresh the active pools ``names`` on ``host`` (blocking), so that its libvirt knows the
    volumes another host of a shared pool made; a pool absent or inactive there is left as it
    is (the move then fails with libvirt's reason). Errors: as typed by ``Hypervisors.call``."""
    with hv.call("refresh shared pools on", host.uri, host.name) as conn:
        for name in names:
            pool = lookup_pool(conn, name)
            if pool is not None and pool.isActive():
                pool.refresh(0)
