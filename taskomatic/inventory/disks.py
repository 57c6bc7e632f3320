"""Inventory queries of the disks of VMs: the volumes a new VM gets (planned, recorded), the
volumes it uses, and where its storage lets it go (``storage_reach``: the hosts that see every
pool its disks are in, from ``pool_hosts``).
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from taskomatic import placement
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.inventory.storage import get_volume, require_pool, require_volume, upsert_volume
from taskomatic.models import (
    AttachedDisk,
    DiskPlan,
    MoveStorage,
    PlanDisksInput,
    PlannedDisk,
    PoolSight,
    RecordVmDisksInput,
    StorageReach,
    SwitchDisksInput,
    VmDisks,
    VolumeCopy,
    owned_volume_name,
)
from taskomatic.states import HostState

# --- the disks of VMs ------------------------------------------------------------------------


def plan_disks(db: Database, inp: PlanDisksInput) -> DiskPlan:
    """Check a new VM's disks and find where they let it go: every pool must be active and one
    host at least must see them all (a local pool: its host; a shared one: the hosts of its
    cluster where it started). ``DiskPlan.host`` is that host when only one does; otherwise
    placement picks among them by ``DiskPlan.pools``."""
    planned: list[PlannedDisk] = []
    seen: dict[str, set[str]] = {}  # pool → the hosts that see it
    for i, disk in enumerate(inp.disks):
        field = f"disks.{i}"
        target = f"vd{chr(ord('a') + i)}"
        if disk.volume is not None:
            pool_name, _, volume = disk.volume.partition("/")
            placed = require_pool(db, pool_name, field=f"{field}.volume")
            found = require_volume(db, pool_name, volume, field=f"{field}.volume").volume
            if found.used_by:
                raise task_error(ErrorType.STORAGE_IN_USE, f"volume {disk.volume} is attached to"
                                 f" VM {found.used_by!r}", field=f"{field}.volume", vm=inp.vm)
            fmt, capacity = found.format, None
        else:
            pool_name = str(disk.pool)
            placed = require_pool(db, pool_name, field=f"{field}.pool")
            try:
                volume = owned_volume_name(inp.vm, i, disk.format)
            except ValueError as err:
                raise task_error(ErrorType.INVALID_REQUEST, f"the VM's volume name {err}",
                                 field="name", vm=inp.vm) from None
            if get_volume(db, pool_name, volume) is not None:
                raise task_error(ErrorType.DUPLICATE_VOLUME, f"volume {pool_name}/{volume} "
                                 "already exists", field=f"{field}.pool", vm=inp.vm)
            fmt, capacity = disk.format, disk.size
        if placed.pool.state != "active":
            raise task_error(ErrorType.INVALID_OPERATION, f"pool {pool_name!r} is not active",
                             field=field, vm=inp.vm)
        seen[pool_name] = {h.host for h in placed.pool.hosts if h.state == "active"}
        planned.append(PlannedDisk(pool=pool_name, volume=volume, format=fmt,
                                   target=target, capacity=capacity, host=placed.pool.host,
                                   host_uri=placed.host_uri))
    common = set.intersection(*seen.values()) if seen else set()
    where = "; ".join(f"{p}: {', '.join(sorted(h)) or 'no host'}" for p, h in sorted(seen.items()))
    if seen and not common:
        raise task_error(ErrorType.INVALID_REQUEST, f"no host sees all the disks' pools ({where});"
                         " a VM's host must see every pool of its disks", field="disks",
                         vm=inp.vm)
    if seen and inp.host and inp.host not in common:
        raise task_error(ErrorType.INVALID_REQUEST, f"host {inp.host} does not see all the "
                         f"disks' pools ({where})", field="host", vm=inp.vm)
    host = next(iter(common)) if len(common) == 1 else None
    return DiskPlan(vm=inp.vm, host=host, disks=planned, pools=sorted(seen))


def record_vm_disks(db: Database, inp: RecordVmDisksInput) -> VmDisks:
    """Record the volumes a create made (owned by the VM) and every attachment; idempotent."""
    try:
        with db.transaction() as cur:
            cur.execute("SELECT id FROM vms WHERE name = %s", (inp.vm,))
            vm = cur.fetchone()
            if vm is None:
                raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {inp.vm!r}", vm=inp.vm)
            created = {v.name: v for v in inp.created}
            for disk in inp.disks:
                cur.execute("SELECT id FROM storage_pools WHERE name = %s", (disk.pool,))
                pool = cur.fetchone()
                if pool is None:
                    raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {disk.pool!r}",
                                     field="disks", vm=inp.vm)
                if disk.volume in created:
                    upsert_volume(cur, pool["id"], created[disk.volume], inp.vm)
                cur.execute(
                    "INSERT INTO vm_disks (vm_id, volume_id, target)"
                    " SELECT %s, id, %s FROM storage_volumes WHERE pool_id = %s AND name = %s"
                    " ON CONFLICT (vm_id, target) DO NOTHING",
                    (vm["id"], disk.target, pool["id"], disk.volume))
    except psycopg2.errors.UniqueViolation as err:
        raise task_error(ErrorType.STORAGE_IN_USE, "a volume is already attached to another VM",
                         field="disks", vm=inp.vm) from err
    return vm_disks(db, inp.vm)


def vm_disks(db: Database, vm: str) -> VmDisks:
    """The VM's disks, each with the host its volume is reached through: the pool's host, or
    for a shared pool the VM's own host."""
    with db.transaction() as cur:
        cur.execute("SELECT p.name AS pool, v.name AS volume, d.target,"
                    " v.owner_vm IS NOT DISTINCT FROM vm.name AS owned, h.name AS host,"
                    " h.uri AS host_uri"
                    " FROM vm_disks d JOIN vms vm ON vm.id = d.vm_id"
                    " JOIN storage_volumes v ON v.id = d.volume_id"
                    " JOIN storage_pools p ON p.id = v.pool_id JOIN hosts h ON h.id ="
                    "  CASE WHEN p.scope = 'shared' THEN vm.host_id ELSE p.host_id END"
                    " WHERE vm.name = %s ORDER BY d.target", (vm,))
        return VmDisks(vm=vm, disks=[AttachedDisk.model_validate(r) for r in cur.fetchall()])


def release_vm_volumes(db: Database, vm: str, keep: bool) -> int:
    """After a VM is gone: forget the volumes it owned (deleted), or keep them ownerless."""
    with db.transaction() as cur:
        if keep:
            cur.execute("UPDATE storage_volumes SET owner_vm = NULL, updated_at = now()"
                        " WHERE owner_vm = %s", (vm,))
        else:
            cur.execute("DELETE FROM storage_volumes v WHERE owner_vm = %s"
                        " AND NOT EXISTS (SELECT 1 FROM vm_disks d WHERE d.volume_id = v.id)",
                        (vm,))
        return int(cur.rowcount)


def unrecord_vm(db: Database, vm: str, uuid: str) -> bool:
    """Undo of recording a VM with disks: drop its row (and attachments) if it is still the VM
    of that UUID; another VM of the same name is left alone."""
    with db.transaction() as cur:
        cur.execute("SELECT host_id FROM vms WHERE name = %s AND uuid = %s", (vm, uuid))
        row = cur.fetchone()
        if row is None:
            return False
        cur.execute("SELECT 1 FROM hosts WHERE id = %s FOR UPDATE", (row["host_id"],))
        cur.execute("DELETE FROM vms WHERE name = %s AND uuid = %s", (vm, uuid))
        return bool(cur.rowcount)


# --- where a VM's storage lets it go ----------------------------------------------------------

# Each VM (of those named) on its host, with every pool its disks are in and the hosts that see
# that pool (``pool_hosts`` rows in state 'active'). A VM without disks has one row, pool NULL.
_REACH = """
    SELECT v.name AS vm, h.name AS host, p.name AS pool, p.scope,
           ARRAY(SELECT sh.name FROM pool_hosts ph JOIN hosts sh ON sh.id = ph.host_id
                 WHERE ph.pool_id = p.id AND ph.state = 'active' ORDER BY sh.name) AS hosts
    FROM vms v JOIN hosts h ON h.id = v.host_id
    LEFT JOIN vm_disks d ON d.vm_id = v.id
    LEFT JOIN storage_volumes sv ON sv.id = d.volume_id
    LEFT JOIN storage_pools p ON p.id = sv.pool_id
    WHERE v.name = ANY(%s)
    GROUP BY v.name, h.name, p.id, p.name, p.scope
    ORDER BY v.name, p.name
"""


def storage_reach(cur: Any, vms: list[str]) -> dict[str, StorageReach]:
    """Where the storage of each of ``vms`` lets it go (``StorageReach``), read in the caller's
    transaction; a VM not in the inventory is left out. Source of the facts: ``vm_disks`` and
    ``pool_hosts``, which pool creates and refreshes record from what libvirt reported."""
    cur.execute(_REACH, (vms,))
    reach: dict[str, StorageReach] = {}
    for row in cur.fetchall():
        found = reach.setdefault(row["vm"], StorageReach(vm=row["vm"], host=row["host"]))
        if row["pool"] is not None:
            found.pools.append(PoolSight(pool=row["pool"], scope=row["scope"],
                                         hosts=list(row["hosts"])))
    return reach


def refuse_unreachable_storage(cur: Any, reach: StorageReach, pinned: str | None,
                               field: str, copy: bool = False) -> None:
    """Refuse a move whose destination cannot see the VM's storage, with the reason
    (placement's ``sees_pools`` then picks among the hosts that see every pool; with a storage
    copy, ``copy``, only the shared pools count). Raises ``NotMigratable``: on ``field`` when
    the ``pinned`` host (if there is one of that name) does not see them all; on ``name`` when
    no host but the VM's own sees them all."""
    if pinned is not None:
        cur.execute("SELECT 1 FROM hosts WHERE name = %s", (pinned,))
        reason = reach.unseen_by(pinned, copy) if cur.fetchone() is not None else None
        if reason is not None:
            raise task_error(ErrorType.NOT_MIGRATABLE, reason, field=field, host=pinned,
                             vm=reach.vm)
        return
    reason = reach.not_movable(copy)
    if reason is not None:
        raise task_error(ErrorType.NOT_MIGRATABLE, reason, field="name", host=reach.host,
                         vm=reach.vm)


# The VM's disks on local pools (what a storage copy copies), with each pool's type.
_LOCAL_DISKS = """
    SELECT d.target, p.name AS source_pool, sv.name AS volume, sv.format, sv.capacity,
           p.type AS pool_type
    FROM vm_disks d JOIN vms v ON v.id = d.vm_id
    JOIN storage_volumes sv ON sv.id = d.volume_id JOIN storage_pools p ON p.id = sv.pool_id
    WHERE v.name = %s AND p.scope = 'local' ORDER BY d.target
"""


def copy_needs(cur: Any, vm: str) -> tuple[placement.CopyNeed, ...]:
    """What a storage copy of ``vm`` makes on its destination (placement's ``copies``): one
    ``CopyNeed`` (pool type, capacity in bytes) per disk on a local pool, from ``vm_disks``."""
    cur.execute(_LOCAL_DISKS, (vm,))
    return tuple(placement.CopyNeed(r["pool_type"], r["capacity"]) for r in cur.fetchall())


def local_pool_rooms(cur: Any, hosts: list[str] | None = None
                     ) -> dict[str, tuple[placement.PoolRoom, ...]]:
    """host name → its active local pools (name, type, free bytes as libvirt last reported
    them, 0 if unknown), for placement's ``takes_copies``; of ``hosts``, or of every host."""
    cur.execute("SELECT h.name AS host, p.name, p.type, COALESCE(p.available, 0) AS available"
                " FROM storage_pools p JOIN hosts h ON h.id = p.host_id"
                " WHERE p.scope = 'local' AND p.state = 'active'"
                " AND (%s::text[] IS NULL OR h.name = ANY(%s)) ORDER BY h.name, p.name",
                (hosts, hosts))
    rooms: dict[str, list[placement.PoolRoom]] = {}
    for r in cur.fetchall():
        rooms.setdefault(r["host"], []).append(
            placement.PoolRoom(r["name"], r["type"], r["available"]))
    return {host: tuple(found) for host, found in rooms.items()}


def move_storage(db: Database, vm: str, destination: str | None = None,
                 copy: bool = False) -> MoveStorage:
    """What a move of ``vm`` needs to know of its disks (``MoveStorage``): the shared pools
    they are in, and whether one of those is a ``dir`` pool; with a storage copy (``copy``) to
    ``destination``, its disks on local pools and the destination pool of each (placement's
    ``copy_targets``; ``NoCapacity`` if that host has none with room now, ``DuplicateVolume``
    if the pool chosen already has a volume of a copy's name)."""
    with db.transaction() as cur:
        cur.execute("SELECT DISTINCT p.name, p.type FROM vm_disks d JOIN vms v ON v.id = d.vm_id"
                    " JOIN storage_volumes sv ON sv.id = d.volume_id"
                    " JOIN storage_pools p ON p.id = sv.pool_id"
                    " WHERE v.name = %s AND p.scope = 'shared' ORDER BY p.name", (vm,))
        rows = cur.fetchall()
        copies: list[VolumeCopy] = []
        if copy and destination is not None:
            cur.execute(_LOCAL_DISKS, (vm,))
            disks = cur.fetchall()
            request = placement.PlacementRequest(
                vm=vm, vcpus=0, memory_mib=0,
                copies=tuple(placement.CopyNeed(d["pool_type"], d["capacity"]) for d in disks))
            load = placement.HostLoad(
                name=destination, state=HostState.UP, vcpus=0, memory_mib=0,
                local_pools=local_pool_rooms(cur, [destination]).get(destination, ()))
            targets = placement.copy_targets(load, request)
            if isinstance(targets, str):
                raise task_error(ErrorType.NO_CAPACITY, f"host {destination!r} {targets}",
                                 field="to", host=destination, vm=vm)
            copies = [VolumeCopy(target=d["target"], source_pool=d["source_pool"],
                                 volume=d["volume"], format=d["format"],
                                 capacity=d["capacity"], pool=targets[d["pool_type"]].name)
                      for d in disks]
            for c in copies:  # a copy never takes over (nor, undone, deletes) another volume
                cur.execute("SELECT 1 FROM storage_volumes sv JOIN storage_pools p"
                            " ON p.id = sv.pool_id WHERE p.name = %s AND sv.name = %s",
                            (c.pool, c.volume))
                if cur.fetchone() is not None:
                    raise task_error(ErrorType.DUPLICATE_VOLUME, f"pool {c.pool!r} of "
                                     f"{destination} already has a volume {c.volume!r}",
                                     field="to", host=destination, vm=vm)
    return MoveStorage(shared_pools=[r["name"] for r in rows],
                       unsafe=any(r["type"] == "dir" for r in rows), copies=copies)


def switch_vm_disks(db: Database, inp: SwitchDisksInput) -> VmDisks:
    """After a move with a storage copy, in one transaction: record each copy (a volume of its
    destination pool, owned as the source volume was), attach it to the VM's disk of the same
    target in place of the source volume, and forget the source volume's row (libvirt deletes
    the volume next). Only when the VM is recorded on ``inp.host`` (the move is recorded);
    otherwise nothing changes. Idempotent: a disk already on its copy is left alone. Errors:
    ``UnknownVm``, ``UnknownPool`` (field ``copies``)."""
    with db.transaction() as cur:
        cur.execute("SELECT v.id, h.name AS host FROM vms v JOIN hosts h ON h.id = v.host_id"
                    " WHERE v.name = %s FOR UPDATE OF v", (inp.vm,))
        vm = cur.fetchone()
        if vm is None:
            raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {inp.vm!r}", vm=inp.vm)
        if vm["host"] != inp.host:
            return vm_disks(db, inp.vm)
        for copy, made in zip(inp.copies, inp.made, strict=True):
            cur.execute("SELECT id FROM storage_pools WHERE name = %s", (copy.pool,))
            pool = cur.fetchone()
            if pool is None:
                raise task_error(ErrorType.UNKNOWN_POOL, f"no pool named {copy.pool!r}",
                                 field="copies", vm=inp.vm)
            cur.execute("SELECT sv.id, sv.owner_vm, sv.pool_id FROM vm_disks d"
                        " JOIN storage_volumes sv ON sv.id = d.volume_id"
                        " WHERE d.vm_id = %s AND d.target = %s", (vm["id"], copy.target))
            old = cur.fetchone()
            if old is None or old["pool_id"] == pool["id"]:
                continue  # switched already (or the disk is gone)
            upsert_volume(cur, pool["id"], made, old["owner_vm"])
            cur.execute("UPDATE vm_disks SET volume_id = (SELECT id FROM storage_volumes"
                        " WHERE pool_id = %s AND name = %s) WHERE vm_id = %s AND target = %s",
                        (pool["id"], made.name, vm["id"], copy.target))
            cur.execute("DELETE FROM storage_volumes WHERE id = %s", (old["id"],))
    return vm_disks(db, inp.vm)
