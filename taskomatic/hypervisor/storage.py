"""Storage pools and volumes in libvirt: lookups that say "absent" instead of raising, the checks
the pool and volume actions share, and volume descriptions.

A ``PoolRef`` with a UUID names one pool definition: a pool of the same name with another UUID
(made by some other definition) is foreign, and is treated as absent, so an undo never stops,
deletes or undefines it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import libvirt

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.pool_xml import volume_info
from taskomatic.models import PoolRef, PoolType, VolumeInfo, VolumeRef

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
