"""Starter library: what is specific to moving VMs and host maintenance (mixed into
``TaskomaticClient``).

    task = await client.migrate_vm(MigrateVmRequest(name="web1", to="h2"))
    clear = await client.clear_host(ClearHostRequest(host="h1"))
    moves = await client.host_moves(clear.id)   # moved / in flight / remaining / failed / ETA
    report = await client.host_result(clear)    # HostTaskResult: final state, per-VM outcomes

The task methods themselves (``migrate_vm``, ``clear_host``, ``activate_host``,
``restore_host``), their defaults from the settings and their inventory checks come from the
registry of task kinds (``workflows.kinds``).
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from starter.tasks import TaskHandle
from taskomatic.models import HostTaskProgress, HostTaskResult, MigrationLimits
from taskomatic.settings import Settings
from workflows.kinds import migration_limits


class HostReads:
    """Client calls that follow migration and maintenance tasks."""

    temporal: Client
    settings: Settings

    def migration_limits(self) -> MigrationLimits:
        """The limits a migration request that sets none runs with (from the settings)."""
        return migration_limits(self.settings)

    async def host_moves(self, task_id: str) -> HostTaskProgress | None:
        """A ClearHost/RestoreHost task's moved / in flight / remaining / failed and ETA;
        ``None`` if the task cannot be asked (unknown, or not started yet)."""
        try:
            moves: HostTaskProgress = await self.temporal.get_workflow_handle(task_id).query(
                "moves", result_type=HostTaskProgress)
        except RPCError:
            return None
        return moves

    async def host_result(self, handle: TaskHandle) -> HostTaskResult:
        """The result of a host task as a ``HostTaskResult`` (raises ``TaskError`` if it
        failed)."""
        result: Any = await handle.result()
        return HostTaskResult.model_validate(result.model_dump() if hasattr(result, "model_dump")
                                             else result)
