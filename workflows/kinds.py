"""The registry of task kinds: one row per kind, read by the worker, the client and the CLI.

A row names the kind's workflow class, the slug its task ids start with (``vm-create-web1-…``),
the client method that starts it (``TaskomaticClient.create_vm``), and optionally

- ``defaults(settings, request) -> request``: the request with what it leaves unset filled in
  from the settings (a StopVm's shutdown timeout, migration limits, a clear's parallelism), or a
  refusal (``ApplicationError`` from ``taskomatic.errors.task_error``) of a field no request may
  set;
- ``check(db, settings, request) -> None``: the advisory inventory check of the request (see
  ``taskomatic.inventory.checks``), skipped for a request with prerequisites.

The rest is derived: the kind's name is the workflow class's name (each workflow keeps
``@workflow.defn(name=...)`` equal to its class name, so the name Temporal records is the class
name; a test holds them equal), and the request and result types come from the type hints of
the workflow's ``run`` method. Adding a kind is one row here, its workflow module, and its typed
method on ``TaskomaticClient`` (one line; ``tests/test_starter.py`` holds the client's methods
equal to the rows), plus its CLI verb if operators need one.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory import checks
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    MigrateVmRequest,
    MigrationLimits,
    RestoreHostRequest,
    StopVmRequest,
    TaskRequest,
)
from taskomatic.settings import Settings
from workflows.hosts import ActivateHost, ClearHost, RestoreHost
from workflows.migration import MigrateVm
from workflows.reconcile import Reconcile
from workflows.storage import (
    CreateStoragePool,
    CreateVolume,
    DeleteVolume,
    DestroyStoragePool,
    RefreshStoragePool,
    ResizeVolume,
    SetPoolAutostart,
)
from workflows.vm_destroy import DestroyVm
from workflows.vm_start import StartVm
from workflows.vm_stop import StopVm
from workflows.vms import CreateVm

Defaults = Callable[[Settings, Any], Any]
Check = Callable[[Database, Settings, Any], None]


@dataclass(frozen=True)
class TaskKind:
    """One kind of task: its workflow class, task-id slug, client method, defaults and check.

    ``name`` (the Temporal workflow type, e.g. ``"CreateVm"``), ``request`` (the model ``run``
    takes) and ``result_type`` (the model it returns, ``None`` if not a class) are derived from
    the workflow class. ``method`` is ``None`` for a kind the client starts only through
    ``submit`` (``Reconcile``).
    """

    workflow: type[Any]
    slug: str
    method: str | None = None
    defaults: Defaults | None = None
    check: Check | None = None

    @property
    def name(self) -> str:
        return self.workflow.__name__

    @cached_property
    def request(self) -> type[TaskRequest]:
        """The request model: the type hint of ``run``'s one parameter after ``self``."""
        params = [p for p in inspect.signature(self.workflow.run).parameters if p != "self"]
        hint = typing.get_type_hints(self.workflow.run).get(params[0]) if params else None
        if not (isinstance(hint, type) and issubclass(hint, TaskRequest)):
            raise TypeError(f"{self.name}.run must take one TaskRequest, not {hint!r}")
        return hint

    @cached_property
    def result_type(self) -> type[Any] | None:
        hint = typing.get_type_hints(self.workflow.run).get("return")
        return hint if isinstance(hint, type) else None


# --- defaults from the settings ----------------------------------------------------------------


def migration_limits(settings: Settings) -> MigrationLimits:
    """The migration limits of the settings: bandwidth (MiB/s, 0 = unlimited), progress and
    completion timeouts (seconds)."""
    return MigrationLimits(bandwidth_mib_s=settings.migration_bandwidth_mib_s,
                           progress_timeout_seconds=settings.migration_progress_timeout_seconds,
                           completion_timeout_seconds=settings.migration_completion_timeout_seconds)


def _unset(req: Any, **defaults: Any) -> Any:
    """``req`` with every field among ``defaults`` that the caller did not set taken from them."""
    unset = {k: v for k, v in defaults.items() if k not in req.model_fields_set}
    return req.model_copy(update=unset) if unset else req


def _stop_defaults(settings: Settings, req: StopVmRequest) -> StopVmRequest:
    if req.timeout_seconds is None:
        return req.model_copy(update={"timeout_seconds": settings.stop_timeout_seconds})
    return req


def _migrate_defaults(settings: Settings, req: MigrateVmRequest) -> MigrateVmRequest:
    result: MigrateVmRequest = _unset(req, limits=migration_limits(settings))
    return result


def _refuse_resume(req: ClearHostRequest | RestoreHostRequest) -> None:
    if req.resume is not None:
        raise task_error(ErrorType.INVALID_REQUEST,
                         "is set by the task itself, never by a request", field="resume")


def _clear_defaults(settings: Settings, req: ClearHostRequest) -> ClearHostRequest:
    _refuse_resume(req)
    result: ClearHostRequest = _unset(
        req, parallel=settings.migrations_in_cluster, batch=settings.clear_host_batch,
        limits=migration_limits(settings), stop_timeout_seconds=settings.stop_timeout_seconds)
    return result


def _restore_defaults(settings: Settings, req: RestoreHostRequest) -> RestoreHostRequest:
    _refuse_resume(req)
    result: RestoreHostRequest = _unset(req, parallel=settings.migrations_in_cluster,
                                        batch=settings.clear_host_batch,
                                        limits=migration_limits(settings))
    return result


# --- the table ---------------------------------------------------------------------------------


def _table(*rows: TaskKind) -> dict[str, TaskKind]:
    """The rows by name; ``ValueError`` if two share a name, slug, method or request type."""
    columns: dict[str, list[object]] = {
        "name": [row.name for row in rows], "slug": [row.slug for row in rows],
        "method": [row.method for row in rows if row.method is not None],
        "request": [row.request for row in rows]}
    for label, keys in columns.items():
        if len(set(keys)) != len(keys):
            raise ValueError(f"task kinds share a {label}: {keys}")
    return {row.name: row for row in rows}


KINDS: dict[str, TaskKind] = _table(
    TaskKind(CreateVm, "vm-create", "create_vm", check=checks.vm_is_new),
    TaskKind(StartVm, "vm-start", "start_vm", check=checks.vm_exists),
    TaskKind(StopVm, "vm-stop", "stop_vm", defaults=_stop_defaults, check=checks.vm_exists),
    TaskKind(DestroyVm, "vm-destroy", "destroy_vm", check=checks.vm_exists),
    TaskKind(MigrateVm, "vm-migrate", "migrate_vm", defaults=_migrate_defaults,
             check=checks.vm_can_move),
    TaskKind(ClearHost, "host-clear", "clear_host", defaults=_clear_defaults,
             check=checks.host_answers),
    TaskKind(ActivateHost, "host-activate", "activate_host", check=checks.host_exists),
    TaskKind(RestoreHost, "host-restore", "restore_host", defaults=_restore_defaults,
             check=checks.host_is_up),
    TaskKind(CreateStoragePool, "pool-create", "create_pool", check=checks.pool_is_new),
    TaskKind(DestroyStoragePool, "pool-destroy", "destroy_pool", check=checks.pool_is_unused),
    TaskKind(RefreshStoragePool, "pool-refresh", "refresh_pool", check=checks.pool_exists),
    TaskKind(SetPoolAutostart, "pool-autostart", "set_pool_autostart", check=checks.pool_exists),
    TaskKind(CreateVolume, "volume-create", "create_volume", check=checks.volume_is_new),
    TaskKind(DeleteVolume, "volume-delete", "delete_volume", check=checks.volume_is_unused),
    TaskKind(ResizeVolume, "volume-resize", "resize_volume", check=checks.volume_exists),
    TaskKind(Reconcile, "reconcile"),
)
"""Every task kind by name. Tests may add a kind of their own (``monkeypatch.setitem``)."""

# The workflow classes the worker registers: one per kind.
TASK_WORKFLOWS: list[type[Any]] = [kind.workflow for kind in KINDS.values()]


def kind_of(request: TaskRequest | type[TaskRequest]) -> TaskKind:
    """The kind whose workflow takes this request (or request type), its own class first and
    then its bases; ``KeyError`` if no kind takes it."""
    cls = request if isinstance(request, type) else type(request)
    by_request = {kind.request: kind for kind in KINDS.values()}
    for base in cls.__mro__:
        if base in by_request:
            return by_request[base]
    raise KeyError(f"no task kind takes a {cls.__name__}")
