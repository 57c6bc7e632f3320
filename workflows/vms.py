"""VM lifecycle tasks: create, start, stop, destroy.

Each follows Dynflow's phases: plan (validate and reserve in the inventory), run (libvirt), then
finalize (record the outcome in the inventory). The workflow id is the task id.
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
        LookupVmInput,
        MigrationLimits,
        RecordVmInput,
        ReleaseCapacityInput,
        RemoveVmInput,
        Reservation,
        ReserveCapacityInput,
        SetVmStateInput,
        StartVmRequest,
        StopVmRequest,
        VmPlacement,
        VmRecord,
        VmState,
        VmTaskResult,
        WaitShutoffInput,
    )
    from taskomatic.temporal import TASK_HOST

from workflows.disks import DISKS_PATCH, VmDiskSteps, disk_specs
from workflows.moves import Mover
from workflows.runbook import DATABASE, HYPERVISOR, ActivityOptions, Undo

Inventory = InventoryActivities
Domains = DomainActivities

# Default graceful-shutdown wait when neither the request nor the starter set one.
DEFAULT_STOP_TIMEOUT_SECONDS = 60.0
# StartVm moves a shut-off VM off a host that left service before starting it (placement at run
# time); histories recorded before that change replay without the move.
MOVE_OFF_UNAVAILABLE_HOST = "start-moves-off-unavailable-host"
_STAYS = (None, HostState.UP)


class VmTask(Mover, VmDiskSteps):
    """Steps shared by the tasks that act on an existing VM."""

    async def locate(self, name: str) -> tuple[VmPlacement, DomainRef]:
        self.phase("plan")
        self.about(vm=name)
        found: VmPlacement = await self.step("look up VM", Inventory.lookup_vm,
                                             LookupVmInput(name=name), options=DATABASE)
        self.on_host(found.vm.host)
        return found, DomainRef(host=found.vm.host, uri=found.host_uri, name=name)

    def on_host(self, host: str) -> None:
        self.about(host=host)
        workflow.upsert_search_attributes([TASK_HOST.value_set(host)])

    async def record_state(self, name: str, state: VmState) -> None:
        self.phase("finalize")
        await self.step("record state", Inventory.set_vm_state,
                        SetVmStateInput(name=name, state=state), options=DATABASE)

    def result(self, vm: str, host: str | None, state: VmState | None, notes: list[str],
               uuid: str | None = None) -> VmTaskResult:
        return VmTaskResult(task_id=workflow.info().workflow_id, kind=self.KIND, vm=vm, host=host,
                            state=state, uuid=uuid, notes=notes)


@workflow.defn(name="CreateVm")
class CreateVm(VmTask):
    KIND = "CreateVm"

    @workflow.run
    async def run(self, req: CreateVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._create(req))

    async def _create(self, req: CreateVmRequest) -> VmTaskResult:
        task_id = workflow.info().workflow_id
        self.about(vm=req.name, host=req.host)
        plan = await self.plan_disks(req) if req.disks and workflow.patched(DISKS_PATCH) else None
        res: Reservation = await self.step(
            "reserve capacity", Inventory.reserve_capacity,
            ReserveCapacityInput(task_id=task_id, vm_name=req.name, vcpus=req.vcpus,
                                 memory_mib=req.memory_mib,
                                 host=plan.host if plan and plan.host else req.host),
            options=DATABASE,
            undo=Undo("release capacity", Inventory.release_capacity,
                      ReleaseCapacityInput(task_id=task_id), DATABASE))
        self.on_host(res.host)

        self.phase("run")
        created = await self.create_volumes(plan) if plan else []
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
            options=DATABASE, undo=self.unrecord_undo(req.name, spec.uuid) if plan else None)
        if plan:
            await self.record_disks(req.name, plan, created)
        return self.result(vm.name, vm.host, vm.state, notes, uuid=vm.uuid)


@workflow.defn(name="StartVm")
class StartVm(VmTask):
    KIND = "StartVm"

    @workflow.run
    async def run(self, req: StartVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._start(req))

    async def _start(self, req: StartVmRequest) -> VmTaskResult:
        found, ref = await self.locate(req.name)
        if (found.host_state not in _STAYS and found.vm.state != VmState.RUNNING
                and workflow.patched(MOVE_OFF_UNAVAILABLE_HOST)):
            self.phase("run")
            self.log("host not in service; moving first", host_state=found.host_state)
            _here, _how, dest, _tried = await self.move(found, to=None, limits=MigrationLimits())
            self.on_host(dest.name)
            ref = DomainRef(host=dest.name, uri=dest.uri, name=req.name)
        self.phase("run")
        started: DomainReport = await self.step("start domain", Domains.start_domain, ref)
        state = started.state or VmState.RUNNING
        await self.record_state(req.name, state)
        return self.result(req.name, ref.host, state, [started.detail], found.vm.uuid)


@workflow.defn(name="StopVm")
class StopVm(VmTask):
    KIND = "StopVm"

    @workflow.run
    async def run(self, req: StopVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._stop(req))

    async def _stop(self, req: StopVmRequest) -> VmTaskResult:
        found, ref = await self.locate(req.name)
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
                                        heartbeat=timedelta(seconds=15)))
            notes.append(waited.detail)
            if waited.state in (VmState.SHUTOFF, VmState.CRASHED):
                await self.record_state(req.name, VmState.SHUTOFF)
                return self.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)
        forced: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        notes.append(forced.detail)
        await self.record_state(req.name, VmState.SHUTOFF)
        return self.result(req.name, ref.host, VmState.SHUTOFF, notes, found.vm.uuid)


@workflow.defn(name="DestroyVm")
class DestroyVm(VmTask):
    KIND = "DestroyVm"

    @workflow.run
    async def run(self, req: DestroyVmRequest) -> VmTaskResult:
        return await self.perform(req, lambda: self._destroy(req))

    async def _destroy(self, req: DestroyVmRequest) -> VmTaskResult:
        found, ref = await self.locate(req.name)
        disks = await self.lookup_disks(req.name) if workflow.patched(DISKS_PATCH) else None
        self.phase("run")
        off: DomainReport = await self.step("power off", Domains.destroy_domain, ref)
        gone: DomainReport = await self.step("undefine domain", Domains.undefine_domain, ref)
        notes = [off.detail, gone.detail]
        if disks and not req.keep_disks:
            notes += await self.delete_owned_volumes(disks)
        self.phase("finalize")
        removed: InventoryResult = await self.step(
            "remove from inventory and release capacity", Inventory.remove_vm,
            RemoveVmInput(name=req.name), options=DATABASE)
        notes.append(removed.detail)
        if disks and any(d.owned for d in disks.disks):
            notes.append(await self.release_volumes(req.name, keep=req.keep_disks))
        return self.result(req.name, ref.host, None, notes, found.vm.uuid)


WORKFLOWS = [CreateVm, StartVm, StopVm, DestroyVm]
