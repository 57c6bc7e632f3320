"""Storage tasks: create, destroy, refresh and autostart pools; create, delete, resize volumes.

A shared pool (``CreatePoolRequest.shared``) is created on its host, then defined and started on
every other host of that host's cluster in service (``StorageTask.share``); a refresh does the
same for hosts that joined since. Which hosts see it is recorded per host (``pool_hosts``).

Like the VM tasks: plan (validate and reserve in the inventory), run (libvirt, each step with its
undo registered next to it), finalize (record what libvirt reports).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.storage import StorageActivities, StorageInventoryActivities
    from taskomatic.models import (
        CreatePoolRequest,
        CreateVolumeRequest,
        DeleteVolumeRequest,
        DestroyPoolRequest,
        PoolAutostartInput,
        PoolNameInput,
        PoolPeers,
        PoolPlacement,
        PoolRecord,
        PoolRef,
        PoolReport,
        PoolScan,
        PoolSpec,
        PoolType,
        RecordPoolHostInput,
        RecordPoolInput,
        RecordVolumeInput,
        RefreshPoolRequest,
        ReservePoolInput,
        ResizeVolumeInput,
        ResizeVolumeRequest,
        SetPoolAutostartRequest,
        StorageResult,
        StorageTaskResult,
        VolumeNameInput,
        VolumePlacement,
        VolumeRecord,
        VolumeReport,
        VolumeSpec,
    )

from workflows.runbook import DATABASE, Runbook, TaskFailed, Undo

# Shared pools (issue 13b): a create or refresh of a shared pool also defines and starts it on
# the other hosts of its cluster.
SHARED_POOL_PATCH = "h13b-shared-pool"

Storage = StorageActivities
StorageInventory = StorageInventoryActivities


class StorageTask(Runbook):
    """Steps shared by the pool and volume tasks."""

    shared = False  # the pool ``locate_pool`` found is shared by a cluster
    pool_uuid: str | None = None  # and its libvirt UUID, when recorded

    async def locate_pool(self, name: str, check_unused: bool = False) -> PoolRef:
        self.phase("plan")
        check = StorageInventory.check_pool_unused if check_unused else StorageInventory.lookup_pool
        placed: PoolPlacement = await self.step(
            "check pool is unused" if check_unused else "look up pool", check,
            PoolNameInput(name=name), options=DATABASE)
        self.on_host(placed.pool.host)
        self.shared, self.pool_uuid = placed.pool.scope == "shared", placed.pool.uuid
        return placed.ref()

    async def record_scan(self, ref: PoolRef) -> PoolRecord:
        self.phase("finalize")
        scan: PoolScan = await self.step("scan pool", Storage.refresh_pool, ref)
        recorded: PoolRecord = await self.step("record pool", StorageInventory.record_pool,
                                               RecordPoolInput(scan=scan, uuid=ref.uuid),
                                               options=DATABASE)
        return recorded

    async def share(self, spec: PoolSpec, autostart: bool) -> list[str]:
        """Define and start the shared pool of ``spec`` on every other host of its cluster in
        service (idempotent: a host that has it already only says so). A host where that fails
        is recorded ``failed`` with the reason, and placement treats it as not seeing the pool:
        a report, not a failure of the task. Returns one note per host."""
        peers: PoolPeers = await self.step(
            "list the cluster's other hosts", StorageInventory.pool_peers,
            PoolNameInput(name=spec.name), options=DATABASE)
        notes: list[str] = []
        for peer in peers.hosts:
            ref = peer.model_copy(update={"uuid": spec.uuid})
            failure = await self._attach(PoolSpec(**ref.model_dump(), type=spec.type,
                                                  path=spec.path, source=spec.source), autostart)
            await self.step(f"record pool on {ref.host}", StorageInventory.record_pool_host,
                            RecordPoolHostInput(pool=spec.name, host=ref.host,
                                                state="failed" if failure else "active",
                                                detail=failure), options=DATABASE)
            notes.append(f"{ref.host}: {failure}" if failure else f"{ref.host}: active")
        return notes

    async def _attach(self, spec: PoolSpec, autostart: bool) -> str | None:
        """Define, start (and autostart) the pool on ``spec.host``; None, or why it failed."""
        ref = PoolRef(host=spec.host, uri=spec.uri, name=spec.name, uuid=spec.uuid)
        try:
            await self.step(f"define pool on {ref.host}", Storage.define_pool, spec,
                            undo=Undo(f"undefine pool on {ref.host}", Storage.undefine_pool, ref))
            await self.step(f"start pool on {ref.host}", Storage.start_pool, ref)
            if autostart:
                await self.step(f"set autostart on {ref.host}", Storage.set_pool_autostart,
                                PoolAutostartInput(**ref.model_dump(), autostart=True))
        except TaskFailed as failed:
            return failed.info.message
        return None

    async def record_volume(self, made: VolumeReport) -> StorageTaskResult:
        self.phase("finalize")
        assert made.volume is not None
        vol: VolumeRecord = await self.step(
            "record volume", StorageInventory.record_volume,
            RecordVolumeInput(pool=made.pool, volume=made.volume), options=DATABASE)
        return self.result(made.pool, "present", [made.detail], volume=vol.name)

    def result(self, pool: str, state: str | None, notes: list[str],
               volume: str | None = None) -> StorageTaskResult:
        return StorageTaskResult(task_id=workflow.info().workflow_id, kind=self.kind, pool=pool,
                                 volume=volume, host=self._state.host, state=state, notes=notes)


@workflow.defn(name="CreateStoragePool")
class CreateStoragePool(StorageTask):
    @workflow.run
    async def run(self, req: CreatePoolRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._create(req))

    async def _create(self, req: CreatePoolRequest) -> StorageTaskResult:
        task_id = workflow.info().workflow_id
        self.about(host=req.host)
        placed: PoolPlacement = await self.step(
            "reserve pool name", StorageInventory.reserve_pool,
            ReservePoolInput(task_id=task_id, request=req), options=DATABASE,
            undo=Undo("release pool name", StorageInventory.release_pool,
                      PoolNameInput(name=req.name, task_id=task_id), DATABASE))
        self.on_host(placed.pool.host)

        self.phase("run")
        ref = placed.ref(uuid=str(workflow.uuid4()))
        spec = PoolSpec(**ref.model_dump(), type=req.type, path=str(req.path), source=req.source)
        notes: list[str] = []
        defined: PoolReport = await self.step(
            "define pool", Storage.define_pool, spec,
            undo=Undo("undefine pool", Storage.undefine_pool, ref))
        notes.append(defined.detail)
        if req.build:
            # A volume group is never removed by an undo: it may hold what it held before.
            undo = (None if req.type is PoolType.LOGICAL
                    else Undo("delete pool storage", Storage.delete_pool, ref))
            built: PoolReport = await self.step("build pool", Storage.build_pool, ref, undo=undo)
            notes.append(built.detail)
        started: PoolReport = await self.step(
            "start pool", Storage.start_pool, ref,
            undo=Undo("stop pool", Storage.stop_pool, ref))
        notes.append(started.detail)
        if req.autostart:
            auto: PoolReport = await self.step(
                "set autostart", Storage.set_pool_autostart,
                PoolAutostartInput(**ref.model_dump(), autostart=True),
                undo=Undo("clear autostart", Storage.set_pool_autostart,
                          PoolAutostartInput(**ref.model_dump(), autostart=False)))
            notes.append(auto.detail)

        recorded = await self.record_scan(ref)
        if req.shared and workflow.patched(SHARED_POOL_PATCH):
            notes += await self.share(spec, req.autostart)
        return self.result(req.name, recorded.state, notes)


@workflow.defn(name="DestroyStoragePool")
class DestroyStoragePool(StorageTask):
    @workflow.run
    async def run(self, req: DestroyPoolRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._destroy(req))

    async def _destroy(self, req: DestroyPoolRequest) -> StorageTaskResult:
        ref = await self.locate_pool(req.name, check_unused=True)
        self.phase("run")
        reports: list[PoolReport] = []
        if self.shared and workflow.patched(SHARED_POOL_PATCH):
            reports += await self._leave_peers(ref)
        if req.delete:
            reports.append(await self.step("delete volumes", Storage.delete_pool_volumes, ref))
        reports.append(await self.step("stop pool", Storage.stop_pool, ref))
        if req.delete:
            reports.append(await self.step("delete pool storage", Storage.delete_pool, ref))
        reports.append(await self.step("undefine pool", Storage.undefine_pool, ref))
        self.phase("finalize")
        removed: StorageResult = await self.step(
            "remove from inventory", StorageInventory.remove_pool, PoolNameInput(name=req.name),
            options=DATABASE)
        return self.result(req.name, None, [r.detail for r in reports] + [removed.detail])


    async def _leave_peers(self, home: PoolRef) -> list[PoolReport]:
        """Stop and undefine a shared pool on the other hosts of its cluster (its storage, on
        the path they share, is deleted from its own host only)."""
        peers: PoolPeers = await self.step(
            "list the cluster's other hosts", StorageInventory.pool_peers,
            PoolNameInput(name=home.name), options=DATABASE)
        reports: list[PoolReport] = []
        for peer in peers.hosts:
            reports.append(await self.step(
                f"undefine pool on {peer.host}", Storage.undefine_pool,
                peer.model_copy(update={"uuid": self.pool_uuid})))
        return reports


@workflow.defn(name="RefreshStoragePool")
class RefreshStoragePool(StorageTask):
    @workflow.run
    async def run(self, req: RefreshPoolRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._refresh(req))

    async def _refresh(self, req: RefreshPoolRequest) -> StorageTaskResult:
        ref = await self.locate_pool(req.name)
        recorded = await self.record_scan(ref)
        notes = [recorded.detail]
        if recorded.scope == "shared" and workflow.patched(SHARED_POOL_PATCH):
            # Hosts that joined the cluster since, or where the pool had failed, get it now.
            notes += await self.share(PoolSpec(**ref.model_dump(exclude={"uuid"}),
                                               uuid=recorded.uuid, type=recorded.type,
                                               path=recorded.path, source=recorded.source),
                                      recorded.autostart)
        return self.result(req.name, recorded.state, notes)


@workflow.defn(name="SetPoolAutostart")
class SetPoolAutostart(StorageTask):
    @workflow.run
    async def run(self, req: SetPoolAutostartRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._set(req))

    async def _set(self, req: SetPoolAutostartRequest) -> StorageTaskResult:
        ref = await self.locate_pool(req.name)
        self.phase("run")
        inp = PoolAutostartInput(**ref.model_dump(), autostart=req.autostart)
        done: PoolReport = await self.step("set autostart", Storage.set_pool_autostart, inp)
        self.phase("finalize")
        await self.step("record autostart", StorageInventory.record_pool_autostart, inp,
                        options=DATABASE)
        return self.result(req.name, "active" if done.active else "inactive", [done.detail])


@workflow.defn(name="CreateVolume")
class CreateVolume(StorageTask):
    @workflow.run
    async def run(self, req: CreateVolumeRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._create(req))

    async def _create(self, req: CreateVolumeRequest) -> StorageTaskResult:
        self.phase("plan")
        placed: PoolPlacement = await self.step(
            "check volume name", StorageInventory.check_new_volume,
            VolumeNameInput(pool=req.pool, name=req.name, clone_from=req.clone_from),
            options=DATABASE)
        self.on_host(placed.pool.host)
        self.phase("run")
        spec = VolumeSpec(host=placed.pool.host, uri=placed.host_uri, pool=req.pool,
                          name=req.name, capacity=req.capacity, format=req.format,
                          clone_from=req.clone_from)
        made: VolumeReport = await self.step(
            "create volume", Storage.create_volume, spec,
            undo=Undo("delete volume", Storage.delete_volume, spec.ref()))
        return await self.record_volume(made)


@workflow.defn(name="DeleteVolume")
class DeleteVolume(StorageTask):
    @workflow.run
    async def run(self, req: DeleteVolumeRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._delete(req))

    async def _delete(self, req: DeleteVolumeRequest) -> StorageTaskResult:
        self.phase("plan")
        placed: VolumePlacement = await self.step(
            "check volume is unattached", StorageInventory.check_volume_unused,
            VolumeNameInput(pool=req.pool, name=req.name), options=DATABASE)
        self.on_host(placed.volume.host)
        self.phase("run")
        gone: VolumeReport = await self.step("delete volume", Storage.delete_volume,
                                             placed.ref())
        self.phase("finalize")
        removed: StorageResult = await self.step(
            "remove from inventory", StorageInventory.remove_volume,
            VolumeNameInput(pool=req.pool, name=req.name), options=DATABASE)
        return self.result(req.pool, None, [gone.detail, removed.detail], volume=req.name)


@workflow.defn(name="ResizeVolume")
class ResizeVolume(StorageTask):
    @workflow.run
    async def run(self, req: ResizeVolumeRequest) -> StorageTaskResult:
        return await self.perform(req, lambda: self._resize(req))

    async def _resize(self, req: ResizeVolumeRequest) -> StorageTaskResult:
        self.phase("plan")
        placed: VolumePlacement = await self.step(
            "look up volume", StorageInventory.lookup_volume,
            VolumeNameInput(pool=req.pool, name=req.name), options=DATABASE)
        self.on_host(placed.volume.host)
        self.phase("run")
        resized: VolumeReport = await self.step(
            "resize volume", Storage.resize_volume,
            ResizeVolumeInput(**placed.ref().model_dump(), capacity=req.capacity))
        return await self.record_volume(resized)
