"""Moving one VM to another host: the steps MigrateVm runs, and StartVm when a VM's host left
service. Placement picks the destination (unless pinned); a failed attempt is checked (the VM must
still be on the source), its reservation released, and another host tried — at most
``MAX_MIGRATION_HOSTS`` in all.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.hosts import HostActivities
    from activities.migration import PROGRESS_SIGNAL, MigrationActivities
    from activities.vms import InventoryActivities
    from taskomatic.errors import ErrorInfo, ErrorType
    from taskomatic.models import (
        MAX_MIGRATION_HOSTS,
        ConfirmMoveInput,
        HostRef,
        MigrateDomainInput,
        MigrationLimits,
        MigrationProgressSignal,
        MigrationReport,
        MoveConfirmation,
        MoveReservation,
        ReleaseCapacityInput,
        ReserveCapacityInput,
        VmPlacement,
    )

from workflows.runbook import DATABASE, ActivityOptions, Runbook, TaskFailed, Undo

Hosts = HostActivities
Moves = MigrationActivities
Inventory = InventoryActivities

# A move's own progress and completion timeouts govern it; the activity timeouts are a backstop.
# The heartbeat timeout lets a new worker take over a move whose worker died.
MOVE_HEARTBEAT = timedelta(seconds=10)
_NOT_RETRIED = ["MigrationFailed", "MigrationStalled", "MigrationTimedOut", "DomainNotFound",
                "DuplicateDomain", "InvalidRequest"]


def migrate_options(limits: MigrationLimits) -> ActivityOptions:
    return ActivityOptions(
        start_to_close=timedelta(seconds=limits.completion_timeout_seconds + 120),
        retry=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=10), maximum_attempts=4,
                          non_retryable_error_types=_NOT_RETRIED),
        heartbeat=MOVE_HEARTBEAT)


class Mover(Runbook):
    """Runbook steps of moving a VM; ``percent`` follows the migration job's progress."""

    @workflow.signal(name=PROGRESS_SIGNAL)
    def migration_progress(self, progress: MigrationProgressSignal) -> None:
        self._state.percent = progress.percent

    async def move(self, found: VmPlacement, *, to: str | None, limits: MigrationLimits
                   ) -> tuple[MoveConfirmation, MigrationReport, HostRef, list[str]]:
        """Move the VM of ``found`` off its host; returns (where it runs, how, the destination,
        hosts tried)."""
        task_id = workflow.info().workflow_id
        vm = found.vm
        source = HostRef(name=vm.host, uri=found.host_uri, migration_uri=found.host_migration_uri)
        if to == source.name:
            raise TaskFailed(ErrorInfo(type=ErrorType.INVALID_REQUEST, field="to", vm=vm.name,
                                       host=to, message=f"to: {vm.name} is already on {to}"),
                             "reserve destination")
        tried: list[str] = []
        release = Undo("release destination", Inventory.release_capacity,
                       ReleaseCapacityInput(task_id=task_id), DATABASE)
        while True:
            res: MoveReservation = await self.step(
                "reserve destination", Hosts.reserve_destination,
                ReserveCapacityInput(task_id=task_id, vm_name=vm.name, vcpus=vm.vcpus,
                                     memory_mib=vm.memory_mib, host=to,
                                     exclude=[source.name, *tried], host_field="to"),
                options=DATABASE, undo=release if not tried else None)
            tried.append(res.host)
            confirm = ConfirmMoveInput(task_id=task_id, name=vm.name, source=source,
                                       destination=res.ref())
            # On cancellation or failure: find the VM and make the inventory agree.
            where_undo = Undo("confirm where the VM runs", Moves.confirm_move, confirm)
            self._undo.append(where_undo)
            try:
                report = await self.migrate_step(vm.name, source, res.ref(), limits)
                here: MoveConfirmation = await self.step(
                    "confirm where it runs and record it", Moves.confirm_move, confirm)
            except TaskFailed as failed:
                here = await self.step("verify the VM is on the source; release destination",
                                       Moves.confirm_move, confirm)
                if here.moved:  # it arrived after all: the error came after the move
                    report = MigrationReport(name=vm.name, source=source.name,
                                             destination=res.host, mode="none", changed=True,
                                             detail=f"arrived despite: {failed.info.message}")
                elif to is not None or len(tried) >= MAX_MIGRATION_HOSTS:
                    raise
                else:
                    self._undo.remove(where_undo)
                    self.log("trying another host", failed=res.host, error=failed.info.message)
                    continue
            self._undo.remove(where_undo)
            if not here.moved:
                raise TaskFailed(ErrorInfo(type=ErrorType.MIGRATION_FAILED, vm=vm.name,
                                           host=source.name,
                                           message=f"{vm.name} is still on {here.host} after "
                                                   f"migrating to {res.host}"),
                                 "confirm where it runs and record it")
            self._state.percent = 100.0
            return here, report, res.ref(), tried

    async def migrate_step(self, name: str, source: HostRef, destination: HostRef,
                       limits: MigrationLimits) -> MigrationReport:
        # --- migration slots: held only around the migrate step --------------------------
        slots = [f"migrate-out:{source.name}", f"migrate-in:{destination.name}",
                 "migrate:cluster"]
        await self.hold("wait for migration slots", slots)
        try:
            self._state.percent = 0.0
            report: MigrationReport = await self.step(
                f"migrate to {destination.name}", Moves.migrate_domain,
                MigrateDomainInput(name=name, source=source, destination=destination,
                                   limits=limits),
                options=migrate_options(limits))
        finally:
            await self.unhold(slots)
        return report

