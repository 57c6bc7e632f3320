"""The steps every VM task shares: look up the VM, record its state, and the task's result.

A helper object, not a base class: each VM task creates one in ``__init__``
(``self.vm = VmSteps(self)``) next to the other helpers it needs (the disk steps, the mover), so a
task carries only the behaviour it uses.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import InventoryActivities
    from taskomatic.models import (
        DomainRef,
        LookupVmInput,
        SetVmStateInput,
        VmPlacement,
        VmState,
        VmTaskResult,
    )

from workflows.runbook import DATABASE, Runbook

Inventory = InventoryActivities


class VmSteps:
    """Steps of a task acting on one VM, run as steps of ``task``."""

    def __init__(self, task: Runbook) -> None:
        self._task = task

    async def locate(self, name: str) -> tuple[VmPlacement, DomainRef]:
        """Plan phase: look up VM ``name`` in the inventory (``UnknownVm`` if it has none);
        returns where it lives and how to reach its domain."""
        self._task.phase("plan")
        self._task.about(vm=name)
        found: VmPlacement = await self._task.step("look up VM", Inventory.lookup_vm,
                                                   LookupVmInput(name=name), options=DATABASE)
        self._task.on_host(found.vm.host)
        return found, DomainRef(host=found.vm.host, uri=found.host_uri, name=name)

    async def record_state(self, name: str, state: VmState) -> None:
        """Finalize phase: record the VM's power state in the inventory, the task's last step
        (it releases the task's claims in its transaction)."""
        self._task.phase("finalize")
        await self._task.step("record state", Inventory.set_vm_state,
                              SetVmStateInput(name=name, state=state), options=DATABASE,
                              last=True)

    def result(self, vm: str, host: str | None, state: VmState | None, notes: list[str],
               uuid: str | None = None) -> VmTaskResult:
        """The task's result: where the VM is and in what state (None: gone), with ``notes``."""
        return VmTaskResult(task_id=workflow.info().workflow_id, kind=self._task.kind, vm=vm,
                            host=host, state=state, uuid=uuid, notes=notes)
