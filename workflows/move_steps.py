"""Moving a VM off its host, as steps of a task: the ``Mover`` (used by ``MigrateVm`` in
``workflows.migration`` and by StartVm, which moves a shut-off VM off a host that left service
before starting it) and its ``DestinationAttempts``.

A move: reserve room on the destination (placement unless pinned) → [with ``copy_storage``:
check, create the destination volumes: ``workflows.storage_copy``] → migrate (live, offline or
cold, slots held) → confirm where it runs and record it, in one step [→ disks switched to the
copies, source volumes deleted]. A failed attempt is verified
(the VM must still be on the source), its reservation released and another host tried:
``DestinationAttempts``, at most ``MAX_MIGRATION_HOSTS`` in all.

A helper module like ``workflows.vm_steps``: it defines no workflow and holds no state, so the
worker passes it through the sandbox instead of re-importing it into every workflow run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
        MoveStorage,
        ReleaseCapacityInput,
        ReserveCapacityInput,
        VmPlacement,
        VmRecord,
    )

from workflows.cancels import CANCEL_HEARTBEAT
from workflows.runbook import DATABASE, ActivityOptions, Runbook, TaskFailed, Undo
from workflows.storage_copy import COPY_PATCH, StorageCopy

Hosts = HostActivities
Moves = MigrationActivities
Inventory = InventoryActivities

# A move's own progress and completion timeouts govern it; the activity timeouts are a backstop.
# The heartbeat timeout lets a new worker take over a move whose worker died, and bounds how late
# a cancel reaches the move (CANCEL_HEARTBEAT for tasks started with CANCEL_PATCH).
MOVE_HEARTBEAT = timedelta(seconds=10)
_NOT_RETRIED = ["MigrationFailed", "MigrationStalled", "MigrationTimedOut", "DomainNotFound",
                "DuplicateDomain", "InvalidRequest"]
_CONFIRM = "confirm where it runs and record it"


def migrate_options(limits: MigrationLimits, cancel_safe: bool = False) -> ActivityOptions:
    """Options of the migrate step: its timeout is the move's completion timeout plus 2 min.
    ``cancel_safe``: the task awaits a cancelled move to its end, which a cancel reaches within
    ``CANCEL_HEARTBEAT`` (``workflows.cancels``)."""
    return ActivityOptions(
        start_to_close=timedelta(seconds=limits.completion_timeout_seconds + 120),
        retry=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=10), maximum_attempts=4,
                          non_retryable_error_types=_NOT_RETRIED),
        heartbeat=CANCEL_HEARTBEAT if cancel_safe else MOVE_HEARTBEAT)


def source_of(found: VmPlacement) -> HostRef:
    """The host the VM of ``found`` is on, as a move's source."""
    return HostRef(name=found.vm.host, uri=found.host_uri, migration_uri=found.host_migration_uri)


@dataclass(frozen=True)
class Moved:
    """A VM moved: where it runs now (``here``), how it moved, its destination, the hosts tried
    (in order, the destination last)."""

    here: MoveConfirmation
    report: MigrationReport
    destination: HostRef
    tried: list[str]
    notes: list[str]


class DestinationAttempts:
    """Try another host, at most ``limit``: attempts at moving one VM, each to a host of its own.

    The rule: an attempt reserves room on a destination (the pinned host, or placement's pick
    among the hosts that are neither the source nor tried before), migrates there and confirms
    where the VM runs. If that fails, the VM is looked for: arrived after all, the move counts;
    still on the source, the attempt's reservation is released and the next attempt tries another
    host. The failure of the last attempt (the only one when the destination is pinned) ends the
    task.

    Undo: the first reservation registers "release destination" (it releases whatever room the
    task holds); while an attempt runs, "confirm where the VM runs" (find the VM and make the
    inventory agree) is registered, and kept if that attempt's failure ends the task.

    With ``copy_storage``, disks on local pools are copied (``workflows.storage_copy``): each
    attempt checks the VM can move so and creates the copies before migrating; a failed attempt
    deletes them, a move switches the disks over and deletes the source volumes.
    """

    def __init__(self, task: Runbook, vm: VmRecord, source: HostRef, *, pinned: str | None,
                 limit: int = MAX_MIGRATION_HOSTS, copy_storage: bool = False) -> None:
        self._task = task
        self._vm = vm
        self._source = source
        self._pinned = pinned
        self._limit = 1 if pinned is not None else limit
        self._copy_storage = copy_storage
        self._copy = StorageCopy(task, vm.name, source)
        self.tried: list[str] = []
        self.storage = MoveStorage()  # of the VM's disks, as the last reservation read it

    async def until_moved(self, migrate: Callable[[HostRef], Awaitable[MigrationReport]]
                          ) -> Moved:
        """Run attempts, ``migrate(destination)`` in each, until the VM has moved. Raises the
        last attempt's ``TaskFailed``, or ``MigrationFailed`` if the VM stays on the source
        although the migration reported success."""
        while True:
            destination = await self._reserve()
            confirm = ConfirmMoveInput(task_id=workflow.info().workflow_id, name=self._vm.name,
                                       source=self._source, destination=destination)
            copying = bool(self.storage.copies) and workflow.patched(COPY_PATCH)
            if copying:  # its undos run after "confirm where the VM runs" (registered next)
                await self._copy.check(destination, self.storage)
                await self._copy.create(destination, self.storage)
            with self._task.undo.during(Undo("confirm where the VM runs", Moves.confirm_move,
                                             confirm)):
                try:
                    report = await migrate(destination)
                    here: MoveConfirmation = await self._task.step(
                        _CONFIRM, Moves.confirm_move, confirm)
                except TaskFailed as failed:
                    here = await self._task.step(
                        "verify the VM is on the source; release destination",
                        Moves.confirm_move, confirm)
                    if here.moved:  # it arrived after all: the error came after the move
                        report = MigrationReport(
                            name=self._vm.name, source=self._source.name,
                            destination=destination.name, mode="none", changed=True,
                            detail=f"arrived despite: {failed.info.message}")
                    elif len(self.tried) >= self._limit:
                        raise
                    else:
                        self._task.log("trying another host", failed=destination.name,
                                       error=failed.info.message)
                        if copying:
                            await self._copy.remove()
                        continue
            if not here.moved:
                raise TaskFailed(ErrorInfo(
                    type=ErrorType.MIGRATION_FAILED, vm=self._vm.name, host=self._source.name,
                    message=f"{self._vm.name} is still on {here.host} after migrating to "
                            f"{destination.name}"), _CONFIRM)
            notes = await self._copy.switch_over(self.storage) if copying else []
            return Moved(here, report, destination, self.tried, notes)

    async def _reserve(self) -> HostRef:
        task_id = workflow.info().workflow_id
        vm = self._vm
        res: MoveReservation = await self._task.step(
            "reserve destination", Hosts.reserve_destination,
            ReserveCapacityInput(task_id=task_id, vm_name=vm.name, vcpus=vm.vcpus,
                                 memory_mib=vm.memory_mib, host=self._pinned,
                                 exclude=[self._source.name, *self.tried], host_field="to",
                                 copy_storage=self._copy_storage),
            options=DATABASE,
            undo=None if self.tried else Undo("release destination", Inventory.release_capacity,
                                              ReleaseCapacityInput(task_id=task_id), DATABASE))
        self.tried.append(res.host)
        self.storage = res.storage
        return res.ref()


class Mover:
    """Moving a VM off its host, as steps of ``task``. Making one registers the
    ``migration_progress`` signal, so the task's ``percent`` follows the migration job."""

    def __init__(self, task: Runbook) -> None:
        self._task = task
        workflow.set_signal_handler(PROGRESS_SIGNAL, self._on_progress)

    def _on_progress(self, progress: MigrationProgressSignal) -> None:
        self._task.set_percent(progress.percent)

    async def move(self, found: VmPlacement, *, to: str | None, limits: MigrationLimits,
                   copy_storage: bool = False) -> Moved:
        """Move the VM of ``found`` off its host: to ``to`` if given, else where placement
        picks, trying other hosts by the rule of ``DestinationAttempts`` (with a storage copy of
        its disks on local pools if ``copy_storage``)."""
        vm, source = found.vm, source_of(found)
        if to == source.name:
            raise TaskFailed(ErrorInfo(type=ErrorType.INVALID_REQUEST, field="to", vm=vm.name,
                                       host=to, message=f"to: {vm.name} is already on {to}"),
                             "reserve destination")
        attempts = DestinationAttempts(self._task, vm, source, pinned=to,
                                       copy_storage=copy_storage)
        moved = await attempts.until_moved(
            lambda destination: self._migrate(vm.name, source, destination, limits,
                                              attempts.storage))
        self._task.set_percent(100.0)
        return moved

    async def _migrate(self, name: str, source: HostRef, destination: HostRef,
                       limits: MigrationLimits, storage: MoveStorage) -> MigrationReport:
        # Migration slots are held only around the migrate step.
        slots = [f"migrate-out:{source.name}", f"migrate-in:{destination.name}",
                 "migrate:cluster"]
        await self._task.hold("wait for migration slots", slots)
        try:
            self._task.set_percent(0.0)
            report: MigrationReport = await self._task.step(
                f"migrate to {destination.name}", Moves.migrate_domain,
                MigrateDomainInput(name=name, source=source, destination=destination,
                                   limits=limits, storage=storage),
                options=migrate_options(limits, self._task.cancel_safe))
        finally:
            await self._task.unhold(slots)
        return report
