"""Storage activities: one libvirt pool or volume action each, idempotent, with typed errors, and
the inventory steps of the pool and volume tasks (one transaction each).

Undos carry the pool's UUID (chosen by the creating task), so compensation never stops, deletes
or undefines a pool of the same name that some other definition made (see
``taskomatic.hypervisor.storage``). Steps that destroy storage ask libvirt who uses it first and
refuse (``StorageInUse``) naming the domains: on the pool's host, and for a pool of files (dir,
netfs) on every other registered host not down (the inventory's ``vm_disks`` misses guests
defined behind taskomatic's back).
"""

from __future__ import annotations

import libvirt
from temporalio import activity

from activities.vms import other_hosts
from taskomatic import inventory as inv
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.pool_xml import build_pool_xml, build_volume_xml, pool_shape
from taskomatic.hypervisor.storage import (
    StorageTarget,
    build_flags,
    describe_volume,
    is_foreign,
    lookup_own_pool,
    lookup_pool,
    lookup_volume,
    refuse_users,
    require_active_pool,
    require_pool,
    unknown_pool,
)
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    PoolAutostartInput,
    PoolNameInput,
    PoolPeers,
    PoolPlacement,
    PoolRecord,
    PoolRef,
    PoolReport,
    PoolScan,
    PoolSpec,
    RecordPoolHostInput,
    RecordPoolInput,
    RecordVolumeInput,
    ReservePoolInput,
    ResizeVolumeInput,
    StorageResult,
    VolumeInfo,
    VolumeNameInput,
    VolumePlacement,
    VolumeRecord,
    VolumeRef,
    VolumeReport,
    VolumeSpec,
)


def _pool_report(ref: PoolRef, pool: libvirt.virStoragePool | None, changed: bool,
                 detail: str) -> PoolReport:
    get_logger(pool=ref.name, host=ref.host).info(detail, changed=changed)
    return PoolReport(name=ref.name, host=ref.host, changed=changed, detail=detail,
                      active=bool(pool.isActive()) if pool is not None else None,
                      autostart=bool(pool.autostart()) if pool is not None else None)


def _volume_report(ref: VolumeRef, vol: libvirt.virStorageVol | None, changed: bool,
                   detail: str) -> VolumeReport:
    get_logger(pool=ref.pool, volume=ref.name, host=ref.host).info(detail, changed=changed)
    return VolumeReport(pool=ref.pool, name=ref.name, host=ref.host, changed=changed,
                        detail=detail, volume=describe_volume(vol) if vol is not None else None)


class StorageActivities:
    """Activities on libvirt storage pools and volumes, sharing the worker's connections."""

    def __init__(self, hypervisors: Hypervisors, db: Database) -> None:
        self.hv = hypervisors
        self.db = db

    def _refuse_users(self, conn: libvirt.virConnect, host: str, target: StorageTarget,
                      what: str) -> None:
        """``StorageInUse`` if any domain uses ``target`` (see ``refuse_users``)."""
        refuse_users(self.hv, conn, host, target,
                     other_hosts(self.db, host) if target.shared else [], what)

    # --- pools -----------------------------------------------------------------------------

    @activity.defn
    def define_pool(self, spec: PoolSpec) -> PoolReport:
        with self.hv.call(f"define pool {spec.name} on", spec.uri, spec.host) as conn:
            pool = lookup_pool(conn, spec.name)
            if pool is not None:
                uuid, ptype, path = pool_shape(pool.XMLDesc(0))
                if (uuid, ptype, path) != (spec.uuid, spec.type.value, spec.path):
                    raise task_error(ErrorType.DUPLICATE_POOL,
                                     f"a different pool {spec.name!r} ({ptype} at {path}, uuid "
                                     f"{uuid}) already exists on {spec.host}", field="name",
                                     host=spec.host)
                return _pool_report(spec, pool, False, "already defined")
            pool = conn.storagePoolDefineXML(build_pool_xml(spec), 0)
            return _pool_report(spec, pool, True, "defined")

    @activity.defn
    def build_pool(self, ref: PoolRef) -> PoolReport:
        """Create the backing storage (directory, mount point, volume group)."""
        with self.hv.call(f"build pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = require_pool(conn, ref)
            if pool.isActive():
                return _pool_report(ref, pool, False, "already active; nothing to build")
            _uuid, ptype, _path = pool_shape(pool.XMLDesc(0))
            pool.build(build_flags(conn, ptype))
            return _pool_report(ref, pool, True, "built")

    @activity.defn
    def start_pool(self, ref: PoolRef) -> PoolReport:
        with self.hv.call(f"start pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = require_pool(conn, ref)
            if pool.isActive():
                return _pool_report(ref, pool, False, "already active")
            pool.create(0)
            return _pool_report(ref, pool, True, "started")

    @activity.defn
    def set_pool_autostart(self, inp: PoolAutostartInput) -> PoolReport:
        with self.hv.call(f"set autostart of pool {inp.name} on", inp.uri, inp.host) as conn:
            pool = lookup_own_pool(conn, inp)
            if pool is None:
                if inp.autostart:
                    raise unknown_pool(inp)
                return _pool_report(inp, None, False, "absent; no autostart to clear")
            word = "on" if inp.autostart else "off"
            if bool(pool.autostart()) == inp.autostart:
                return _pool_report(inp, pool, False, f"autostart already {word}")
            pool.setAutostart(1 if inp.autostart else 0)
            return _pool_report(inp, pool, True, f"autostart {word}")

    @activity.defn
    def stop_pool(self, ref: PoolRef) -> PoolReport:
        with self.hv.call(f"stop pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = lookup_own_pool(conn, ref)
            if pool is None:
                return _pool_report(ref, None, False, "absent; nothing to stop")
            if not pool.isActive():
                return _pool_report(ref, pool, False, "already inactive")
            self._refuse_users(conn, ref.host, StorageTarget.of(pool, None, by_path=False),
                               f"pool {ref.name}")
            pool.destroy()
            return _pool_report(ref, pool, True, "stopped")

    @activity.defn
    def delete_pool(self, ref: PoolRef) -> PoolReport:
        """Delete an inactive pool's backing storage (rmdir, vgremove); the definition stays."""
        with self.hv.call(f"delete storage of pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = lookup_own_pool(conn, ref)
            if pool is None:
                return _pool_report(ref, None, False, "absent; no storage to delete")
            self._refuse_users(conn, ref.host, StorageTarget.of(pool, None),
                               f"the storage of pool {ref.name}")
            if pool.isActive():
                pool.destroy()
            try:
                pool.delete(0)
            except libvirt.libvirtError as err:
                if "No such file" not in str(err):  # a repeated delete finds it gone
                    raise
                return _pool_report(ref, pool, False, "backing storage already gone")
            return _pool_report(ref, pool, True, "backing storage deleted")

    @activity.defn
    def undefine_pool(self, ref: PoolRef) -> PoolReport:
        """Remove a pool's definition, stopping it first if it is active."""
        with self.hv.call(f"undefine pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = lookup_pool(conn, ref.name)
            if pool is None:
                return _pool_report(ref, None, False, "already absent")
            if is_foreign(pool, ref):
                return _pool_report(ref, None, False,
                                    "a pool of that name from another definition; left alone")
            self._refuse_users(conn, ref.host, StorageTarget.of(pool, None, by_path=False),
                               f"pool {ref.name}")
            if pool.isActive():
                pool.destroy()
            pool.undefine()
            return _pool_report(ref, None, True, "undefined")

    @activity.defn
    def refresh_pool(self, ref: PoolRef) -> PoolScan:
        """Re-read the pool's storage and list its volumes (an inactive pool lists none)."""
        with self.hv.call(f"refresh pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = require_pool(conn, ref)
            volumes: list[VolumeInfo] = []
            if pool.isActive():
                pool.refresh(0)
                volumes = sorted((describe_volume(v) for v in pool.listAllVolumes(0)),
                                 key=lambda v: v.name)
            _state, capacity, allocation, available = pool.info()
            base = _pool_report(ref, pool, True, f"refreshed: {len(volumes)} volume(s)")
            return PoolScan(**base.model_dump(), capacity=capacity, allocation=allocation,
                            available=available, volumes=volumes)

    @activity.defn
    def delete_pool_volumes(self, ref: PoolRef) -> PoolReport:
        """Delete every volume of an active pool (before its storage is deleted)."""
        with self.hv.call(f"delete volumes of pool {ref.name} on", ref.uri, ref.host) as conn:
            pool = require_pool(conn, ref)
            self._refuse_users(conn, ref.host, StorageTarget.of(pool, None),
                               f"volumes of pool {ref.name}")
            if not pool.isActive():
                pool.create(0)
            volumes = pool.listAllVolumes(0)
            for vol in volumes:
                vol.delete(0)
            return _pool_report(ref, pool, bool(volumes), f"deleted {len(volumes)} volume(s)")

    # --- volumes ---------------------------------------------------------------------------

    @activity.defn
    def create_volume(self, spec: VolumeSpec) -> VolumeReport:
        """Create a volume (or clone ``clone_from``); an identical existing one is a no-op."""
        with self.hv.call(f"create volume {spec.pool}/{spec.name} on", spec.uri,
                          spec.host) as conn:
            pool = require_active_pool(conn, spec)
            vol = lookup_volume(pool, spec.name)
            if vol is not None:
                found = describe_volume(vol)
                if (found.capacity, found.format) != (spec.capacity, spec.format):
                    raise task_error(ErrorType.DUPLICATE_VOLUME,
                                     f"a different volume {spec.pool}/{spec.name} ({found.format},"
                                     f" {found.capacity} bytes) already exists", field="name",
                                     host=spec.host)
                return _volume_report(spec, vol, False, "already exists with the same shape")
            xml = build_volume_xml(spec)
            if spec.clone_from:
                base = lookup_volume(pool, spec.clone_from)
                if base is None:
                    raise task_error(ErrorType.UNKNOWN_VOLUME,
                                     f"no volume {spec.pool}/{spec.clone_from} to clone",
                                     field="clone_from", host=spec.host)
                vol = pool.createXMLFrom(xml, base, 0)
                return _volume_report(spec, vol, True, f"cloned from {spec.clone_from}")
            vol = pool.createXML(xml, 0)
            return _volume_report(spec, vol, True, "created")

    @activity.defn
    def delete_volume(self, ref: VolumeRef) -> VolumeReport:
        with self.hv.call(f"delete volume {ref.pool}/{ref.name} on", ref.uri, ref.host) as conn:
            pool = lookup_pool(conn, ref.pool)
            vol = lookup_volume(pool, ref.name) if pool is not None and pool.isActive() else None
            if pool is None or vol is None:
                return _volume_report(ref, None, False, "already absent")
            self._refuse_users(conn, ref.host, StorageTarget.of(pool, [vol]),
                               f"volume {ref.pool}/{ref.name}")
            vol.delete(0)
            return _volume_report(ref, None, True, "deleted")

    @activity.defn
    def resize_volume(self, inp: ResizeVolumeInput) -> VolumeReport:
        """Grow a volume; shrinking is refused (it would destroy data)."""
        with self.hv.call(f"resize volume {inp.pool}/{inp.name} on", inp.uri, inp.host) as conn:
            vol = lookup_volume(require_active_pool(conn, inp), inp.name)
            if vol is None:
                raise task_error(ErrorType.UNKNOWN_VOLUME, f"no volume {inp.pool}/{inp.name}",
                                 field="name", host=inp.host)
            current = describe_volume(vol).capacity
            if current == inp.capacity:
                return _volume_report(inp, vol, False, "already that size")
            if inp.capacity < current:
                raise task_error(ErrorType.INVALID_REQUEST,
                                 f"{inp.capacity} bytes is smaller than the current {current}; "
                                 "shrinking is refused", field="capacity", host=inp.host)
            try:
                vol.resize(inp.capacity, 0)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    raise task_error(ErrorType.NOT_SUPPORTED,
                                     f"the hypervisor of {inp.host} does not support resizing "
                                     "volumes", host=inp.host,
                                     libvirt_code=err.get_error_code()) from err
                raise
            return _volume_report(inp, vol, True, f"resized from {current} bytes")

    def all(self) -> list[object]:
        return [self.define_pool, self.build_pool, self.start_pool, self.set_pool_autostart,
                self.stop_pool, self.delete_pool, self.undefine_pool, self.refresh_pool,
                self.delete_pool_volumes, self.create_volume, self.delete_volume,
                self.resize_volume]


def storage_result(changed: bool, detail: str, **where: str) -> StorageResult:
    """An inventory step's outcome, logged with what it is about (``pool=``, ``volume=``,
    ``vm=``)."""
    get_logger(**where).info(detail, changed=changed)
    return StorageResult(changed=changed, detail=detail)


class StorageInventoryActivities:
    """The inventory steps of the pool and volume tasks, one transaction each."""

    def __init__(self, db: Database, pool_roots: list[str]) -> None:
        self.db = db
        self.pool_roots = pool_roots

    # --- pools -----------------------------------------------------------------------------

    @activity.defn
    def reserve_pool(self, inp: ReservePoolInput) -> PoolPlacement:
        """Validate a new pool against this worker's ``pool_roots`` and hold its name."""
        return inv.reserve_pool(self.db, inp.task_id, inp.request, self.pool_roots)

    @activity.defn
    def release_pool(self, inp: PoolNameInput) -> StorageResult:
        released = inv.release_pool(self.db, str(inp.task_id))
        return storage_result(released, "pool name released" if released
                              else "no pool name held", pool=inp.name)

    @activity.defn
    def lookup_pool(self, inp: PoolNameInput) -> PoolPlacement:
        return inv.require_pool(self.db, inp.name)

    @activity.defn
    def check_pool_unused(self, inp: PoolNameInput) -> PoolPlacement:
        return inv.check_pool_unused(self.db, inp.name)

    @activity.defn
    def record_pool(self, inp: RecordPoolInput) -> PoolRecord:
        return inv.record_pool(self.db, inp.scan, inp.uuid)

    @activity.defn
    def pool_peers(self, inp: PoolNameInput) -> PoolPeers:
        """The other hosts of a shared pool's cluster, in service (none for a local pool)."""
        return inv.pool_peers(self.db, inp.name)

    @activity.defn
    def record_pool_host(self, inp: RecordPoolHostInput) -> PoolRecord:
        """Record whether a host sees a pool (``pool_hosts``)."""
        return inv.record_pool_host(self.db, inp)

    @activity.defn
    def record_pool_autostart(self, inp: PoolAutostartInput) -> StorageResult:
        changed = inv.set_pool_autostart(self.db, inp.name, inp.autostart)
        word = "on" if inp.autostart else "off"
        return storage_result(changed, f"autostart {word}" if changed
                              else f"autostart already {word}", pool=inp.name)

    @activity.defn
    def remove_pool(self, inp: PoolNameInput) -> StorageResult:
        removed = inv.remove_pool(self.db, inp.name)
        return storage_result(removed, "removed from inventory" if removed
                              else "already absent from inventory", pool=inp.name)

    # --- volumes ---------------------------------------------------------------------------

    @activity.defn
    def check_new_volume(self, inp: VolumeNameInput) -> PoolPlacement:
        return inv.check_new_volume(self.db, inp.pool, inp.name, inp.clone_from)

    @activity.defn
    def lookup_volume(self, inp: VolumeNameInput) -> VolumePlacement:
        return inv.require_volume(self.db, inp.pool, inp.name)

    @activity.defn
    def check_volume_unused(self, inp: VolumeNameInput) -> VolumePlacement:
        return inv.check_volume_unused(self.db, inp.pool, inp.name)

    @activity.defn
    def record_volume(self, inp: RecordVolumeInput) -> VolumeRecord:
        return inv.record_volume(self.db, inp.pool, inp.volume, inp.owner_vm)

    @activity.defn
    def remove_volume(self, inp: VolumeNameInput) -> StorageResult:
        removed = inv.remove_volume(self.db, inp.pool, inp.name)
        return storage_result(removed, "removed from inventory" if removed
                              else "already absent from inventory", pool=inp.pool,
                              volume=inp.name)

    def all(self) -> list[object]:
        return [self.reserve_pool, self.release_pool, self.lookup_pool, self.check_pool_unused,
                self.record_pool, self.record_pool_autostart, self.remove_pool, self.pool_peers,
                self.record_pool_host,
                self.check_new_volume, self.lookup_volume, self.check_volume_unused,
                self.record_volume, self.remove_volume]
