"""The advisory checks of task requests against the inventory, one function per rule.

Each check has the shape ``check(db, settings, request) -> None`` and is named in the kind's row
of the task-kind registry (``workflows.kinds``). It raises the typed ``ApplicationError`` of
``taskomatic.errors`` (``task_error``: a type, a message and the request field at fault), which
the starter turns into a ``RequestError`` naming that field. The checks are advisory: they run
before the task exists, without locks, and each task re-checks under locks when it runs. A
request with prerequisites (``after``) is not checked here: the tasks it waits for may create
what it needs.
"""

from __future__ import annotations

from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    HostRecord,
    HostState,
    MigrateVmRequest,
    PlanDisksInput,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    RestoreHostRequest,
    SetPoolAutostartRequest,
    StartVmRequest,
    StopVmRequest,
)
from taskomatic.settings import Settings

# --- VMs ---------------------------------------------------------------------------------------


def vm_is_new(db: Database, settings: Settings, req: CreateVmRequest) -> None:
    """A create: the name is free, a pinned host and a named cluster exist (the host in the
    cluster), an existing affinity group has the policy asked for, and the disks can be
    planned (pools known, volumes free, room in the pools)."""
    inventory.check_new_vm(db, req.name, req.host, req.cluster, req.group, req.group_policy)
    if req.disks:
        inventory.plan_disks(db, PlanDisksInput(vm=req.name, host=req.host, disks=req.disks))


def vm_exists(db: Database, settings: Settings,
              req: StartVmRequest | StopVmRequest | DestroyVmRequest) -> None:
    """A start, stop or destroy: the VM ``req.name`` is in the inventory (``UnknownVm`` on
    ``name`` if not)."""
    if inventory.get_vm(db, req.name) is None:
        raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {req.name!r}", field="name",
                         vm=req.name)


def vm_can_move(db: Database, settings: Settings, req: MigrateVmRequest) -> None:
    """A migration: the VM exists (``name``); a chosen destination (``to``) is another host, one
    that is up, and one of the VM's cluster (VMs never move between clusters)."""
    found = inventory.get_vm(db, req.name)
    if found is None:
        raise task_error(ErrorType.UNKNOWN_VM, f"no VM named {req.name!r}", field="name",
                         vm=req.name)
    if req.to is not None:
        if req.to == found.vm.host:
            raise task_error(ErrorType.INVALID_REQUEST, f"{req.name} is already on {req.to}",
                             field="to", vm=req.name, host=req.to)
        destination = _require_host(db, req.to, "to", up=True)
        source = inventory.get_host(db, found.vm.host)
        if source is not None and source.cluster != destination.cluster:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"host {req.to!r} is in cluster {destination.cluster!r}; {req.name}"
                             f" is in cluster {source.cluster!r} (VMs never move between"
                             " clusters)", field="to", vm=req.name, host=req.to)


# --- hosts -------------------------------------------------------------------------------------


def host_exists(db: Database, settings: Settings,
                req: ClearHostRequest | ActivateHostRequest) -> None:
    """A clear or activate: the host ``req.host`` is in the inventory, in any state."""
    _require_host(db, req.host, "host", up=False)


def host_is_up(db: Database, settings: Settings, req: RestoreHostRequest) -> None:
    """A restore: the host ``req.host`` exists and is up (back in service)."""
    _require_host(db, req.host, "host", up=True)


def _require_host(db: Database, name: str, field: str, up: bool) -> HostRecord:
    host = inventory.get_host(db, name)
    if host is None:
        raise task_error(ErrorType.UNKNOWN_HOST, f"no host named {name!r}", field=field,
                         host=name)
    if up and host.state != HostState.UP:
        raise task_error(ErrorType.HOST_NOT_AVAILABLE,
                         f"host {name!r} is in state {host.state.value!r}, not 'up'",
                         field=field, host=name)
    return host


# --- storage -----------------------------------------------------------------------------------


def pool_is_new(db: Database, settings: Settings, req: CreatePoolRequest) -> None:
    """A pool create: name free, host known and up, path under one of ``settings.pool_roots``."""
    inventory.check_new_pool(db, req, settings.pool_roots)


def pool_is_unused(db: Database, settings: Settings, req: DestroyPoolRequest) -> None:
    """A pool destroy: the pool exists and no volume of it is in use."""
    inventory.check_pool_unused(db, req.name)


def pool_exists(db: Database, settings: Settings,
                req: RefreshPoolRequest | SetPoolAutostartRequest) -> None:
    """A pool refresh or autostart change: the pool ``req.name`` exists."""
    inventory.require_pool(db, req.name)


def volume_is_new(db: Database, settings: Settings, req: CreateVolumeRequest) -> None:
    """A volume create: the pool exists, the name is free in it, a clone source exists."""
    inventory.check_new_volume(db, req.pool, req.name, req.clone_from)


def volume_is_unused(db: Database, settings: Settings, req: DeleteVolumeRequest) -> None:
    """A volume delete: the volume exists and no VM uses it."""
    inventory.check_volume_unused(db, req.pool, req.name)


def volume_exists(db: Database, settings: Settings, req: ResizeVolumeRequest) -> None:
    """A volume resize: the volume ``req.name`` exists in pool ``req.pool``."""
    inventory.require_volume(db, req.pool, req.name)
