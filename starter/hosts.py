"""Starter library: moving VMs and host maintenance (mixed into ``TaskomaticClient``).

    task = await client.migrate_vm(MigrateVmRequest(name="web1", to="h2"))
    clear = await client.clear_host(ClearHostRequest(host="h1"))
    moves = await client.host_moves(clear.id)   # moved / in flight / remaining / failed / ETA
    report = await client.host_result(clear)    # HostTaskResult: final state, per-VM outcomes

Requests are checked against the inventory first (unknown VM or host, destination out of
service) and refused with ``RequestError`` naming the field; limits the request leaves unset come
from the settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from starter.tasks import TaskHandle, TaskKind
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    HostState,
    HostTaskProgress,
    HostTaskResult,
    MigrateVmRequest,
    MigrationLimits,
    RestoreHostRequest,
)
from taskomatic.settings import Settings
from workflows.hosts import ActivateHost, ClearHost, RestoreHost
from workflows.migration import MigrateVm

HOST_KINDS: dict[str, TaskKind] = {
    "MigrateVm": TaskKind(MigrateVm, MigrateVmRequest, "vm-migrate"),
    "ClearHost": TaskKind(ClearHost, ClearHostRequest, "host-clear"),
    "ActivateHost": TaskKind(ActivateHost, ActivateHostRequest, "host-activate"),
    "RestoreHost": TaskKind(RestoreHost, RestoreHostRequest, "host-restore"),
}


class HostTasks:
    """Client methods of migration and maintenance tasks."""

    temporal: Client
    settings: Settings
    db: Database
    submit: Callable[..., Awaitable[TaskHandle]]
    checked: Callable[..., Awaitable[Any]]

    def migration_limits(self) -> MigrationLimits:
        s = self.settings
        return MigrationLimits(bandwidth_mib_s=s.migration_bandwidth_mib_s,
                               progress_timeout_seconds=s.migration_progress_timeout_seconds,
                               completion_timeout_seconds=s.migration_completion_timeout_seconds)

    def _with_defaults(self, req: Any, **defaults: Any) -> Any:
        """``req`` with every default the caller did not set taken from the settings."""
        unset = {k: v for k, v in defaults.items() if k not in req.model_fields_set}
        return req.model_copy(update=unset) if unset else req

    async def migrate_vm(self, req: MigrateVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("MigrateVm", await self.checked("MigrateVm", req), task_id)

    async def clear_host(self, req: ClearHostRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("ClearHost", await self.checked("ClearHost", req), task_id)

    async def activate_host(self, req: ActivateHostRequest, task_id: str | None = None
                            ) -> TaskHandle:
        return await self.submit("ActivateHost", await self.checked("ActivateHost", req),
                                 task_id)

    async def restore_host(self, req: RestoreHostRequest, task_id: str | None = None
                           ) -> TaskHandle:
        return await self.submit("RestoreHost", await self.checked("RestoreHost", req), task_id)

    async def check_host_task(self, kind: str, req: Any, inventory_checks: bool = True) -> Any:
        """A host or migration request with the settings' defaults filled in, checked against
        the inventory (``RequestError`` naming the field) unless ``inventory_checks`` is off."""
        from starter.client import RequestError

        s = self.settings
        if kind == "MigrateVm":
            req = self._with_defaults(req, limits=self.migration_limits())
        elif kind in ("ClearHost", "RestoreHost"):
            if getattr(req, "resume", None) is not None:
                raise RequestError("resume", "is set by the task itself, never by a request")
            req = self._with_defaults(req, parallel=s.migrations_in_cluster,
                                      batch=s.clear_host_batch, limits=self.migration_limits())
            if kind == "ClearHost":
                req = self._with_defaults(req, stop_timeout_seconds=s.stop_timeout_seconds)
        if not inventory_checks:
            return req
        if kind == "MigrateVm":
            found = await asyncio.to_thread(inventory.get_vm, self.db, req.name)
            if found is None:
                raise RequestError("name", f"no VM named {req.name!r}")
            if req.to is not None:
                if req.to == found.vm.host:
                    raise RequestError("to", f"{req.name} is already on {req.to}")
                await self._require_host(req.to, "to", up=True)
        else:
            await self._require_host(req.host, "host", up=kind == "RestoreHost")
        return req

    async def host_moves(self, task_id: str) -> HostTaskProgress | None:
        """A ClearHost/RestoreHost task's moved / in flight / remaining / failed and ETA."""
        try:
            moves: HostTaskProgress = await self.temporal.get_workflow_handle(task_id).query(
                "moves", result_type=HostTaskProgress)
        except RPCError:
            return None
        return moves

    async def host_result(self, handle: TaskHandle) -> HostTaskResult:
        result: Any = await handle.result()
        return HostTaskResult.model_validate(result.model_dump() if hasattr(result, "model_dump")
                                             else result)

    async def _require_host(self, name: str, field: str, up: bool = False) -> None:
        from starter.client import RequestError

        host = await asyncio.to_thread(inventory.get_host, self.db, name)
        if host is None:
            raise RequestError(field, f"no host named {name!r}")
        if up and host.state != HostState.UP:
            raise RequestError(field, f"host {name!r} is in state {host.state.value!r}, not 'up'")
