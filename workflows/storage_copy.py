"""The storage-copy steps of a move (``vm migrate --copy-storage``, ``host clear
--copy-storage``): a VM whose disks are on local pools moves with
``VIR_MIGRATE_NON_SHARED_DISK``, its volumes copied into local pools of the destination.

Runbook of one attempt (``DestinationAttempts``; the reservation chose the destination pools):
check the VM can move so (running; hypervisors that migrate live) → create each destination
volume (same name, format and capacity; undo: delete it) → migrate → confirm where it runs and
record the move → point the inventory's disks at the copies (the copies' undos dropped: the VM
now runs on them) → delete the source volumes. An attempt that fails before the switch-over
deletes its copies before the next host is tried; a task that fails or is cancelled first
confirms where the VM runs, then points the disks at the copies if it moved after all, then
deletes the copies (``delete_volume`` refuses a volume a domain uses, so a copy the VM runs on is
never deleted). The source volumes are deleted only once the move is recorded; one that cannot be
deleted is kept and noted. Behind the ``i13-copy-storage`` patch.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.disks import DiskActivities
    from activities.migration import MigrationActivities
    from activities.storage import StorageActivities
    from taskomatic.models import (
        HostRef,
        MigrateDomainInput,
        MigrationLimits,
        MoveStorage,
        SwitchDisksInput,
        VolumeInfo,
        VolumeRef,
        VolumeReport,
        VolumeSpec,
    )

from workflows.runbook import DATABASE, Runbook, TaskFailed, Undo

COPY_PATCH = "i13-copy-storage"
Storage = StorageActivities
Disks = DiskActivities
Moves = MigrationActivities


class StorageCopy:
    """The storage copy of one VM's move, as steps of ``task``: the copies made on the current
    attempt's destination, and their undos while they may be deleted."""

    def __init__(self, task: Runbook, vm: str, source: HostRef) -> None:
        self._task = task
        self._vm = vm
        self._source = source
        self._made: list[VolumeInfo] = []
        self._undos: list[Undo] = []  # the copies' deletes, then the switch if it moved
        self._switch = SwitchDisksInput(vm=vm, host=source.name, copies=[], made=[])

    async def check(self, destination: HostRef, storage: MoveStorage) -> None:
        """Refuse (``NotMigratable``, the task ends) unless the VM can move with a copy now."""
        await self._task.step("check the VM can move with a storage copy",
                              Moves.check_storage_copy, MigrateDomainInput(
                                  name=self._vm, source=self._source, destination=destination,
                                  limits=MigrationLimits(), storage=storage))

    async def create(self, destination: HostRef, storage: MoveStorage) -> None:
        """Create the destination volumes, each deleted again unless the move is recorded; and
        register "point the disks at the copies if it moved" (for a move that completes while
        the task is cancelled: ``switch_vm_disks`` acts only if the VM is recorded there)."""
        self._made, self._undos = [], []
        for copy in storage.copies:
            spec = VolumeSpec(host=destination.name, uri=destination.uri, pool=copy.pool,
                              name=copy.volume, capacity=copy.capacity,
                              format="raw" if copy.format == "raw" else "qcow2")
            undo = Undo(f"delete copy {copy.pool}/{copy.volume} on {destination.name}",
                        Storage.delete_volume, spec.ref())
            made: VolumeReport = await self._task.step(
                f"create volume {copy.pool}/{copy.volume} on {destination.name}",
                Storage.create_volume, spec, undo_once_done=undo)
            self._undos.append(undo)
            if made.volume is not None:
                self._made.append(made.volume)
        self._switch = SwitchDisksInput(vm=self._vm, host=destination.name,
                                        copies=storage.copies, made=self._made)
        self._undos.append(Undo("point the disks at the copies if it moved",
                                Disks.switch_vm_disks, self._switch, DATABASE))
        self._task.undo.add(self._undos[-1])

    async def remove(self) -> None:
        """Delete this attempt's copies now (the VM stayed on the source)."""
        self._task.undo.drop(self._undos.pop())  # the switch: nothing moved
        while self._undos:
            undo = self._undos.pop()
            await self._task.step(undo.name, undo.activity, undo.arg)
            self._task.undo.drop(undo)

    async def switch_over(self, storage: MoveStorage) -> list[str]:
        """The move is recorded: the VM's disks point at the copies, then the source volumes
        are deleted. Returns notes (a source volume kept, and why)."""
        for undo in self._undos:
            self._task.undo.drop(undo)
        self._undos = []
        await self._task.step("point the disks at the copies", Disks.switch_vm_disks,
                              self._switch, options=DATABASE)
        notes = [f"{len(storage.copies)} disk(s) copied"]
        for copy in storage.copies:
            ref = VolumeRef(host=self._source.name, uri=self._source.uri, pool=copy.source_pool,
                            name=copy.volume)
            try:
                await self._task.step(f"delete source volume {copy.source_pool}/{copy.volume}",
                                      Storage.delete_volume, ref)
            except TaskFailed as failed:
                notes.append(f"source volume {copy.source_pool}/{copy.volume} kept: "
                             f"{failed.info.message}")
        return notes
