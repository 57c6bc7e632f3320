"""Create a VM, the first of the VM lifecycle tasks (create, start, stop, destroy).

Each follows Dynflow's phases: plan (validate and reserve in the inventory), run (libvirt), then
finalize (record the outcome in the inventory). The workflow id is the task id.

Each VM task has a module of its own (this one, ``vm_start``, ``vm_stop``, ``vm_destroy``):
the workflow sandbox imports a workflow's module afresh into every run, so a run pays for
its own task's definition only (measured: 4.4 ms of CPU to import the four together, 1.1 ms
each alone).

Each task makes the helpers it uses in ``__init__``: every one the VM steps (``VmSteps``), the
create and destroy tasks the disk steps (``DiskSteps``), StartVm the ``Mover`` (it may move a VM
off a host that left service before starting it).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import DomainActivities, InventoryActivities
    from taskomatic.models import (
        CreateVmRequest,
        DomainRef,
        DomainReport,
        DomainSpec,
        RecordVmInput,
        ReleaseCapacityInput,
        Reservation,
        ReserveCapacityInput,
        VmRecord,
        VmState,
        VmTaskResult,
    )

from workflows.disks import DISKS_PATCH, DiskSteps, disk_specs
from workflows.runbook import DATABASE, Runbook, Undo
from workflows.vm_steps import VmSteps

Inventory = InventoryActivities
Domains = DomainActivities


@workflow.defn(name="CreateVm")
class CreateVm(Runbook):
    """Create a VM: reserve capacity (and plan its disks), define the domain, start it if asked,
    record it."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.disks = DiskSteps(self)

    @workflow.run
    async def run(self, req: CreateVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._create(req))

    async def _create(self, req: CreateVmRequest) -> VmTaskResult:
        task_id = workflow.info().workflow_id
        self.about(vm=req.name, host=req.host)
        plan = await self.disks.plan(req) if req.disks and self.patched(DISKS_PATCH) else None
        res: Reservation = await self.step(
            "reserve capacity", Inventory.reserve_capacity,
            ReserveCapacityInput(task_id=task_id, vm_name=req.name, vcpus=req.vcpus,
                                 memory_mib=req.memory_mib,
                                 host=plan.host if plan and plan.host else req.host,
                                 cluster=req.cluster, group=req.group,
                                 group_policy=req.group_policy,
                                 pools=plan.pools if plan else []),
            options=DATABASE,
            undo=Undo("release capacity", Inventory.release_capacity,
                      ReleaseCapacityInput(task_id=task_id), DATABASE))
        self.on_host(res.host)

        self.phase("run")
        plan = plan.on(res.host, res.host_uri) if plan else None
        created = await self.disks.create_volumes(plan) if plan else []
        spec = DomainSpec(host=res.host, uri=res.host_uri, name=req.name,
                          uuid=str(workflow.uuid4()), vcpus=req.vcpus, memory_mib=req.memory_mib,
                          disks=disk_specs(plan))
        ref = DomainRef(host=spec.host, uri=spec.uri, name=spec.name)
        defined: DomainReport = await self.step(
            "define domain", Domains.define_domain, spec,
            undo=Undo("undefine domain", Domains.undefine_domain, ref))
        notes, state = [defined.detail], defined.state or VmState.SHUTOFF
        if req.start:
            started: DomainReport = await self.step("start domain", Domains.start_domain, ref)
            notes.append(started.detail)
            state = started.state or VmState.RUNNING

        self.phase("finalize")
        vm: VmRecord = await self.step(
            "record VM", Inventory.record_vm,
            RecordVmInput(task_id=task_id, name=req.name, uuid=spec.uuid, host=res.host,
                          vcpus=req.vcpus, memory_mib=req.memory_mib, state=state),
            options=DATABASE, undo=self.disks.unrecord_undo(req.name, spec.uuid) if plan else None,
            last=not plan)
        if plan:
            await self.disks.record(req.name, plan, created)
        return self.vm.result(vm.name, vm.host, vm.state, notes, uuid=vm.uuid)

