"""The starter library: what a web UI, a script or the CLI uses to drive taskomatic.

    client = await TaskomaticClient.connect()
    task = await client.create_vm(CreateVmRequest(name="web1", memory_mib=1024, start=True))
    result = await task.result()          # raises TaskError with a TaskFailure on failure

``start(request, task_id=None) -> TaskHandle`` starts a task of any kind of the registry
(``workflows.kinds``), the kind following from the request's type; every kind also has a typed
method of its own, named in its registry row: ``create_vm``, ``start_vm``, ``stop_vm``,
``destroy_vm``, ``migrate_vm``, ``clear_host``, ``activate_host``, ``restore_host``,
``create_pool``, ``destroy_pool``, ``refresh_pool``, ``set_pool_autostart``, ``create_volume``,
``delete_volume``, ``resize_volume``.

Requests are validated (pydantic, then an advisory inventory check) before any task exists, so a
bad request raises ``RequestError`` naming the field and leaves nothing behind. A task without
prerequisites takes its place in line for its resources when it is submitted, so tasks on one
resource run in submission order. Reads of hosts and VMs come straight from the inventory.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from typing import Annotated, Any

from pydantic import AfterValidator
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from starter.batch import BatchItem, plan_batch
from starter.clusters import ClusterCalls
from starter.errors import RequestError, refusals, request_error, validated, within
from starter.events import AuditReads
from starter.hosts import HostReads
from starter.storage import StorageReads
from starter.tasks import STATE_QUERIES, TaskError, TaskHandle, TaskStatus, status_of
from taskomatic import inventory
from taskomatic.errors import error_info
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.identity import probe_facts
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database, get_database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    HostFacts,
    HostRecord,
    HostSpec,
    MigrateVmRequest,
    Model,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    RestoreHostRequest,
    SetPoolAutostartRequest,
    StartVmRequest,
    StopVmRequest,
    TaskRequest,
    TaskState,
    VmRecord,
    capacity_of,
    check_root_task_id,
    new_task_id,
)
from taskomatic.settings import Settings, get_settings
from taskomatic.temporal import (
    TASK_HOST,
    TASK_KIND,
    TASK_POOL,
    TASK_REQUESTED_BY,
    TASK_RESOURCES,
    TASK_STATE,
    TASK_VM,
    connect_temporal,
)
from workflows.kinds import KINDS, kind_of
from workflows.ordering import GRANTED_AT_SUBMIT

# Search attributes filled from a task's resources, so the Web UI can filter by VM, host, pool.
_SUBJECTS = {"vm": TASK_VM, "host": TASK_HOST, "pool": TASK_POOL}

__all__ = ["RequestError", "TaskError", "TaskHandle", "TaskStatus",
           "TaskomaticClient", "caller_identity", "request_error", "validated"]


class TaskomaticClient(HostReads, StorageReads, ClusterCalls, AuditReads):
    """``requested_by``: who asks, for requests that do not say (default: the OS user)."""

    def __init__(self, temporal: Client, settings: Settings, db: Database,
                 requested_by: str | None = None) -> None:
        self.temporal = temporal
        self.settings = settings
        self.db = db
        self.requested_by = requested_by or caller_identity()

    @classmethod
    async def connect(cls, settings: Settings | None = None,
                      requested_by: str | None = None) -> TaskomaticClient:
        settings = settings or get_settings()
        temporal = await connect_temporal(settings)
        return cls(temporal, settings, get_database(settings.database_url), requested_by)

    # --- inventory reads and host registration ---------------------------------------------

    async def hosts(self) -> list[HostRecord]:
        return await asyncio.to_thread(inventory.list_hosts, self.db)

    async def vms(self, host: str | None = None) -> list[VmRecord]:
        return await asyncio.to_thread(inventory.list_vms, self.db, host)

    async def add_host(self, spec: HostSpec, probe: bool = True) -> tuple[HostRecord, bool]:
        """Register a hypervisor in its cluster; with ``probe``, first check that its URI answers
        and read what libvirt says of it (``HostFacts``): its identity (host UUID), so that one
        hypervisor cannot be registered twice under another name or URI (``RequestError`` on
        ``uri`` naming the existing host); its driver and CPU model, checked against the
        cluster (``RequestError`` on ``cluster`` / ``cpu_model``); its CPUs and memory, the
        capacity (times the cluster's overcommit) unless ``spec`` gives one. Without ``probe``
        only the URI's spellings are compared, the driver is the URI's and ``spec`` must give
        the capacity."""
        facts = await asyncio.to_thread(_probe_uri, spec) if probe else None
        added: tuple[HostRecord, bool] = await self._inventory(inventory.add_host, self.db, spec,
                                                               facts)
        return added

    # --- tasks -----------------------------------------------------------------------------

    async def start(self, req: TaskRequest, task_id: str | None = None) -> TaskHandle:
        """Check ``req`` and start the task that takes it; the kind follows from the request's
        type (a ``CreateVmRequest`` starts a CreateVm). The per-kind methods (``create_vm``, …)
        are this, named. Raises ``RequestError``; ``KeyError`` if no kind takes the type."""
        kind = kind_of(req).name
        return await self.submit(kind, await self.checked(kind, req), task_id)

    # --- one method per task kind: typed names for ``start`` (tests/test_starter.py holds
    # them equal to the registry's rows: each kind's ``method`` and request type) ------------

    async def create_vm(self, req: CreateVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def start_vm(self, req: StartVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def stop_vm(self, req: StopVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def destroy_vm(self, req: DestroyVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def migrate_vm(self, req: MigrateVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def clear_host(self, req: ClearHostRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def activate_host(self, req: ActivateHostRequest,
                            task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def restore_host(self, req: RestoreHostRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def create_pool(self, req: CreatePoolRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def destroy_pool(self, req: DestroyPoolRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def refresh_pool(self, req: RefreshPoolRequest, task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def set_pool_autostart(self, req: SetPoolAutostartRequest,
                                 task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def create_volume(self, req: CreateVolumeRequest,
                            task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def delete_volume(self, req: DeleteVolumeRequest,
                            task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    async def resize_volume(self, req: ResizeVolumeRequest,
                            task_id: str | None = None) -> TaskHandle:
        return await self.start(req, task_id)

    def with_defaults(self, kind: str, req: Any) -> Any:
        """``req`` with what it leaves unset filled in from the settings, by the kind's rule in
        the registry (a StopVm's timeout, migration limits, a clear's parallelism); raises
        ``RequestError`` for a field no request may set (``resume``)."""
        defaults = KINDS[kind].defaults
        if defaults is None:
            return req
        with refusals():
            return defaults(self.settings, req)

    async def checked(self, kind: str, req: Any) -> Any:
        """The advisory checks of a request against the inventory (``RequestError`` naming the
        field), with defaults from the settings filled in. A request with prerequisites is
        checked by its task when they are done: they may create what it needs."""
        req = self.with_defaults(kind, req)
        check = KINDS[kind].check
        if check is not None and not req.after:
            await self._inventory(check, self.db, self.settings, req)
        return req

    async def submit_batch(self, items: list[BatchItem]) -> list[tuple[str, TaskHandle]]:
        """Submit several tasks with dependencies among them (see ``starter.batch``); returns
        (key, handle) in submission order. Nothing is submitted unless the whole batch is valid;
        if submitting fails half-way, the tasks already submitted are cancelled."""
        plan = plan_batch(items, KINDS)
        listed = {item.key: i for i, item in enumerate(items)}
        ready = []
        for task in plan:
            req = task.request
            if not task.in_batch_after:
                with within(f"items[{listed[task.key]}].request"):
                    req = await self.checked(task.kind, task.request)
            outside = [t for t in req.after if t not in {p.task_id for p in plan}]
            if outside:
                await self._check_prerequisites(task.task_id, outside)
            ready.append((task, req))
        submitted: list[tuple[str, TaskHandle]] = []
        try:
            for task, req in ready:
                submitted.append((task.key, await self.submit(task.kind, req, task.task_id)))
        except BaseException:
            for _, handle in submitted:
                await handle.cancel()
            raise
        return submitted

    async def submit(self, kind: str, req: TaskRequest, task_id: str | None = None
                     ) -> TaskHandle:
        """Start a task of ``kind``. Without prerequisites it joins the line for its resources
        now; with them, when they have completed. ``task_id`` defaults to a readable unique id."""
        spec = KINDS[kind]
        req = req.model_copy(update={"requested_by": req.requested_by or self.requested_by})
        resources = sorted(set(req.resources()))
        subject = next((r.split(":", 1)[1] for r in resources), "")
        if task_id is None:
            task_id = new_task_id(spec.slug, subject)
        else:
            validated(_ChosenTaskId, task_id=task_id)
        if req.after:
            await self._check_prerequisites(task_id, req.after)
        in_line = bool(resources) and req.ordered and not req.after
        memo: dict[str, Any] = {"resources": resources, "after": req.after,
                                "requested_by": req.requested_by}
        granted = False
        if in_line:  # its place in line, and the resources themselves if they are free
            capacities = {r: capacity_of(r, self.settings) for r in resources}
            claimed, _ = await asyncio.to_thread(ordering.acquire, self.db, task_id, kind,
                                                 capacities)
            memo[GRANTED_AT_SUBMIT] = granted = claimed.granted
        try:
            handle = await self.temporal.start_workflow(
                spec.workflow.run, req, id=task_id, task_queue=self.settings.task_queue,
                search_attributes=self._attributes(kind, resources, req, granted), memo=memo)
        except BaseException:
            if in_line:  # never started: give its place back
                await asyncio.to_thread(ordering.release, self.db, task_id)
            raise
        await self._record_submitted(task_id, handle.result_run_id, kind, req, resources)
        return TaskHandle(handle, kind)

    def _attributes(self, kind: str, resources: list[str], req: TaskRequest, granted: bool
                    ) -> TypedSearchAttributes:
        # A task granted its resources here holds them and waits for nothing: it is running
        # from its submission (it then publishes no state of its own until it ends).
        pairs: list[SearchAttributePair[Any]] = [
            SearchAttributePair(TASK_KIND, kind),
            SearchAttributePair(TASK_STATE, "running" if granted else "new"),
            SearchAttributePair(TASK_REQUESTED_BY, req.requested_by or "")]
        if resources:
            pairs.append(SearchAttributePair(TASK_RESOURCES, resources))
        seen = set()
        for resource in resources:
            prefix, _, name = resource.partition(":")
            if prefix in _SUBJECTS and prefix not in seen:
                seen.add(prefix)
                pairs.append(SearchAttributePair(_SUBJECTS[prefix], name))
        pinned_host = getattr(req, "host", None)
        if pinned_host and "host" not in seen:  # known before placement; the task sets it else
            pairs.append(SearchAttributePair(TASK_HOST, pinned_host))
        return TypedSearchAttributes(pairs)

    async def _check_prerequisites(self, task_id: str, after: list[str]) -> None:
        if task_id in after:
            raise RequestError("after", f"a task cannot wait for itself ({task_id})")

        async def exists(prerequisite: str) -> None:
            try:
                await self.temporal.get_workflow_handle(prerequisite).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    raise RequestError("after", f"no task {prerequisite!r}") from None
                raise
        await asyncio.gather(*(exists(t) for t in after))

    def task(self, task_id: str, kind: str = "") -> TaskHandle:
        workflow = KINDS[kind].workflow.run if kind in KINDS else None
        if workflow is not None:
            handle = self.temporal.get_workflow_handle_for(workflow, task_id)
        else:
            handle = self.temporal.get_workflow_handle(task_id)
        return TaskHandle(handle, kind, _result_type)

    async def cancel(self, task_id: str) -> None:
        """Cancel a task: it undoes what it did, releases what it held, and ends cancelled."""
        await self.task(task_id).cancel()

    async def tasks(self, *, kind: str | None = None, vm: str | None = None,
                    host: str | None = None, pool: str | None = None,
                    state: TaskState | None = None, limit: int = 200) -> list[TaskStatus]:
        """Tasks, newest first, from Temporal's visibility store (one query)."""
        clauses = [f"TaskQueue = '{_quote(self.settings.task_queue)}'"]
        for key, value in ((TASK_KIND, kind), (TASK_VM, vm), (TASK_HOST, host),
                           (TASK_POOL, pool)):
            if value:
                clauses.append(f"{key.name} = '{_quote(value)}'")
        if state:
            clauses.append(STATE_QUERIES[state])
        found: list[TaskStatus] = []
        async for wf in self.temporal.list_workflows(" AND ".join(clauses), limit=limit):
            found.append(status_of(wf, await wf.memo()))
        return found

    async def _inventory(self, fn: Any, *args: Any) -> Any:
        with refusals():
            return await asyncio.to_thread(fn, *args)


def caller_identity() -> str:
    """The OS user running this process (its uid if it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _result_type(kind: str) -> type[Any] | None:
    return KINDS[kind].result_type if kind in KINDS else None


class _ChosenTaskId(Model):
    """A task id a caller chooses: a ``TaskId`` with room for its children's ids."""

    task_id: Annotated[str, AfterValidator(check_root_task_id)]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _probe_uri(spec: HostSpec) -> HostFacts:
    """Connect to ``spec.uri`` and read what its hypervisor is (``HostFacts``); ``RequestError``
    on ``uri`` if it does not answer."""
    hv = Hypervisors()
    try:
        return probe_facts(hv, spec.uri, spec.name)
    except ApplicationError as err:
        raise RequestError("uri", f"cannot reach {spec.uri}: {error_info(err).message}") from None
    finally:
        hv.close()
