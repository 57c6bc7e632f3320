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
import uuid
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from activities import inventory
from activities.db import Database
from taskomatic.migration import (
    ActivateHostRequest,
    ClearHostRequest,
    HostTaskProgress,
    HostTaskResult,
    MigrateVmRequest,
    MigrationLimits,
    RestoreHostRequest,
)
from taskomatic.models import HostState, TaskRequest
from taskomatic.settings import Settings
from taskomatic.temporal import TASK_HOST, TASK_KIND, TASK_VM

if TYPE_CHECKING:
    from starter.client import TaskHandle

HOST_SLUGS = {"ClearHost": "host-clear", "ActivateHost": "host-activate",
              "RestoreHost": "host-restore"}


class HostTasks:
    """Client methods of migration and maintenance tasks."""

    temporal: Client
    settings: Settings
    db: Database

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
        from starter.client import RequestError

        found = await asyncio.to_thread(inventory.get_vm, self.db, req.name)
        if found is None:
            raise RequestError("name", f"no VM named {req.name!r}")
        if req.to is not None:
            if req.to == found.vm.host:
                raise RequestError("to", f"{req.name} is already on {req.to}")
            await self._require_host(req.to, "to", up=True)
        req = self._with_defaults(req, limits=self.migration_limits())
        return await self._start("MigrateVm", req, task_id, vm=req.name)

    async def clear_host(self, req: ClearHostRequest, task_id: str | None = None) -> TaskHandle:
        if req.resume is not None:
            from starter.client import RequestError

            raise RequestError("resume", "is set by the task itself, never by a request")
        await self._require_host(req.host, "host")
        s = self.settings
        req = self._with_defaults(req, parallel=s.migrations_in_cluster,
                                  batch=s.clear_host_batch, limits=self.migration_limits(),
                                  stop_timeout_seconds=s.stop_timeout_seconds)
        return await self._start("ClearHost", req, task_id, host=req.host)

    async def activate_host(self, req: ActivateHostRequest, task_id: str | None = None
                            ) -> TaskHandle:
        await self._require_host(req.host, "host")
        return await self._start("ActivateHost", req, task_id, host=req.host)

    async def restore_host(self, req: RestoreHostRequest, task_id: str | None = None
                           ) -> TaskHandle:
        await self._require_host(req.host, "host", up=True)
        s = self.settings
        req = self._with_defaults(req, parallel=s.migrations_in_cluster,
                                  batch=s.clear_host_batch, limits=self.migration_limits())
        return await self._start("RestoreHost", req, task_id, host=req.host)

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

    async def _start(self, kind: str, req: TaskRequest, task_id: str | None, *,
                     vm: str | None = None, host: str | None = None) -> TaskHandle:
        from starter.client import _SLUGS, _WORKFLOWS, TaskHandle

        task_id = task_id or f"{_SLUGS[kind]}-{vm or host}-{uuid.uuid4().hex[:8]}"
        attrs = [SearchAttributePair(TASK_KIND, kind)]
        if vm:
            attrs.append(SearchAttributePair(TASK_VM, vm))
        if host:
            attrs.append(SearchAttributePair(TASK_HOST, host))
        handle = await self.temporal.start_workflow(
            _WORKFLOWS[kind].run, req, id=task_id, task_queue=self.settings.task_queue,
            search_attributes=TypedSearchAttributes(attrs))
        return TaskHandle(handle, kind)
