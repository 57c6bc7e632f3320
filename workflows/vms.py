"""VM lifecycle tasks: create, start, stop, destroy.

Each follows Dynflow's phases: plan (validate and reserve in the inventory), run (libvirt), then
finalize (record the outcome in the inventory). The workflow id is the task id.

Each task makes the helpers it uses in ``__init__``: every one the VM steps (``VmSteps``), the
create and destroy tasks the disk steps (``DiskSteps``), StartVm the ``Mover`` (it may move a VM
off a host that left service before starting it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import DomainActivities, InventoryActivities
    from taskomatic.models import (
        CreateVmRequest,
        DestroyVmRequest,
        DomainRef,
        DomainReport,
        DomainSpec,
        HostState,
        InventoryResult,
        MigrationLimits,
        RecordVmInput,
        ReleaseCapacityInput,
        RemoveVmInput,
        Reservation,
        ReserveCapacityInput,
        StartVmRequest,
        StopVmRequest,
        VmRecord,
        VmState,
        VmTaskResult,
        WaitShutoffInput,
    )

from workflows.cancels import CANCEL_HEARTBEAT
from workflows.disks import DISKS_PATCH, DiskSteps, disk_specs
from workflows.move_steps import Mover
from workflows.runbook import DATABASE, HYPERVISOR, ActivityOptions, Runbook, Undo
from workflows.vm_steps import VmSteps

Inventory = InventoryActivities
Domains = DomainActivities

# Default graceful-shutdown wait when neither the request nor the starter set one.
DEFAULT_STOP_TIMEOUT_SECONDS = 60.0
# StartVm moves a shut-off VM off a host that left service before starting it (placement at run
# time); histories recorded before that change replay without the move.
MOVE_OFF_UNAVAILABLE_HOST = "start-moves-off-unavailable-host"
_STAYS = (None, HostState.UP)


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


@workflow.defn(name="StartVm")
class StartVm(Runbook):
    """Start a VM, first moving it off its host if that host left service."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.mover = Mover(self)

    @workflow.run
    async def run(self, req: StartVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._start(req))

    async def _start(self, req: StartVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        if (found.host_state not in _STAYS and found.vm.state != VmState.RUNNING
                and workflow.patched(MOVE_OFF_UNAVAILABLE_HOST)):
            self.phase("run")
            self.log("host not in service; moving first", host_state=found.host_state)
            moved = await self.mover.move(found, to=None, limits=MigrationLimits())
            dest = moved.destination
            self.on_host(dest.name)
            ref = DomainRef(host=dest.name, uri=dest.uri, name=req.name)
        self.phase("run")
        started: DomainReport = await self.step("start domain", Domains.start_domain, ref)
        state = started.state or VmState.RUNNING
        await self.vm.record_state(req.name, state)
        return self.vm.result(req.name, ref.host, state, [started.detail], found.vm.uuid)


@workflow.defn(name="StopVm")
class StopVm(Runbook):
    """Stop a VM: ask the guest to shut down and wait, then power off (at once with ``force``)."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)

    @workflow.run
    async def run(self, req: StopVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._stop(req))

    async def _stop(self, req: StopVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        self.phase("run")
        notes: list[str] = []
        if not req.force:
            asked: DomainReport = await self.step("request shutdown", Domains.shutdown_domain, ref)
            notes.append(asked.detail)
            timeout = req.timeout_seconds or DEFAULT_STOP_TIMEOUT_SECONDS
            waited: DomainReport = await self.step(
                "wait for shutoff", Domains.wait_domain_shutoff,
                WaitShutoffInput(**ref.model_dump(), timeout_seconds=timeout),
                options=ActivityOptions(start_to_close=timedelta(seconds=timeout + 60),
                                        retry=HYPERVISOR.retry,
                                        heartbeat=CANCEL_HEARTBEAT if self.cancel_safe
                                        else timedelta(seconds=15)))
            notes.append(waited.detail)
            if waited.state in (VmState.SHUTOFF, VmState.CRASHED):
                await self.vm.record_state(req.name, VmState.SHUTOFF)
                return self.vm.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)
        forced: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        notes.append(forced.detail)
        await self.vm.record_state(req.name, VmState.SHUTOFF)
        return self.vm.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)


@workflow.defn(name="DestroyVm")
class DestroyVm(Runbook):
    """Destroy a VM: power off, undefine, delete the volumes it owns (unless kept), forget it."""

    def __init__(self) -> None:
        super().__init__()
        self.vm = VmSteps(self)
        self.disks = DiskSteps(self)

    @workflow.run
    async def run(self, req: DestroyVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._destroy(req))

    async def _destroy(self, req: DestroyVmRequest) -> VmTaskResult:
        found, ref = await self.vm.locate(req.name)
        disks = await self.disks.lookup(req.name) if self.patched(DISKS_PATCH) else None
        self.phase("run")
        off: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        gone: DomainReport = await self.step("undefine domain", Domains.undefine_domain, ref)
        notes = [off.detail, gone.detail]
        if disks and not req.keep_disks:
            notes += await self.disks.delete_owned_volumes(disks)
        self.phase("finalize")
        owned = bool(disks and any(d.owned for d in disks.disks))
        removed: InventoryResult = await self.step(
            "remove from inventory and release capacity", Inventory.remove_vm,
            RemoveVmInput(name=req.name), options=DATABASE, last=not owned)
        notes.append(removed.detail)
        if owned:
            notes.append(await self.disks.release_volumes(req.name, keep=req.keep_disks))
        return self.vm.result(req.name, ref.host, None, notes, found.vm.uuid)
