"""The starter library: what a web UI, a script or the CLI uses to drive taskomatic.

    client = await TaskomaticClient.connect()
    task = await client.create_vm(CreateVmRequest(name="web1", memory_mib=1024, start=True))
    result = await task.result()          # raises TaskError with a TaskFailure on failure

Requests are validated (pydantic, then an advisory inventory check) before any task exists, so a
bad request raises ``RequestError`` naming the field and leaves nothing behind. A task without
prerequisites takes its place in line for its resources when it is submitted, so tasks on one
resource run in submission order. Reads of hosts and VMs come straight from the inventory.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import uuid
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from starter.batch import BatchError, BatchItem, plan_batch
from starter.hosts import HOST_KINDS, HostTasks
from starter.storage import STORAGE_KINDS, StorageClientMixin
from starter.tasks import (
    STATE_QUERIES,
    TaskError,
    TaskHandle,
    TaskKind,
    TaskStatus,
    status_of,
)
from taskomatic import inventory
from taskomatic.errors import error_info
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database, get_database
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostRecord,
    HostSpec,
    Model,
    PlanDisksInput,
    ReconcileRequest,
    StartVmRequest,
    StopVmRequest,
    TaskRequest,
    TaskState,
    VmRecord,
    capacity_of,
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
from workflows.ordering import GRANTED_AT_SUBMIT
from workflows.reconcile import Reconcile
from workflows.vms import CreateVm, DestroyVm, StartVm, StopVm

KINDS: dict[str, TaskKind] = {
    "CreateVm": TaskKind(CreateVm, CreateVmRequest, "vm-create"),
    "StartVm": TaskKind(StartVm, StartVmRequest, "vm-start"),
    "StopVm": TaskKind(StopVm, StopVmRequest, "vm-stop"),
    "DestroyVm": TaskKind(DestroyVm, DestroyVmRequest, "vm-destroy"),
    "Reconcile": TaskKind(Reconcile, ReconcileRequest, "reconcile"),
    **HOST_KINDS,
    **STORAGE_KINDS,
}
# Search attributes filled from a task's resources, so the Web UI can filter by VM, host, pool.
_SUBJECTS = {"vm": TASK_VM, "host": TASK_HOST, "pool": TASK_POOL}

__all__ = ["KINDS", "RequestError", "TaskError", "TaskHandle", "TaskKind", "TaskStatus",
           "TaskomaticClient", "validated"]


class RequestError(ValueError):
    """A request refused before any task was started; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


def request_error(err: ValidationError) -> RequestError:
    """The first problem of a pydantic validation error, as ``field: reason``."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    named = re.match(r"([a-z_][a-z_.0-9]*): (.*)", message, re.S)
    if named:  # a check across fields names its field in the message
        field = ".".join(filter(None, [field, named.group(1)]))
        message = named.group(2)
    return RequestError(field, message)


def validated(model: type[Model], **fields: Any) -> Any:
    """Build a request model, turning a validation error into a ``RequestError``."""
    try:
        return model(**fields)
    except ValidationError as err:
        raise request_error(err) from None


class TaskomaticClient(HostTasks, StorageClientMixin):
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
        """Register a hypervisor; with ``probe``, first check that its URI answers."""
        if probe:
            await asyncio.to_thread(_probe_uri, spec)
        added: tuple[HostRecord, bool] = await self._inventory(inventory.add_host, self.db, spec)
        return added

    # --- tasks -----------------------------------------------------------------------------

    async def create_vm(self, req: CreateVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("CreateVm", await self.checked("CreateVm", req), task_id)

    async def start_vm(self, req: StartVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("StartVm", await self.checked("StartVm", req), task_id)

    async def stop_vm(self, req: StopVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("StopVm", await self.checked("StopVm", req), task_id)

    async def destroy_vm(self, req: DestroyVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self.submit("DestroyVm", await self.checked("DestroyVm", req), task_id)

    async def checked(self, kind: str, req: Any) -> Any:
        """The advisory checks of a request against the inventory (``RequestError`` naming the
        field), with defaults from the settings filled in. A request with prerequisites is
        checked by its task when they are done: they may create what it needs."""
        if kind == "StopVm" and req.timeout_seconds is None:
            req = req.model_copy(update={"timeout_seconds": self.settings.stop_timeout_seconds})
        if kind in HOST_KINDS:
            return await self.check_host_task(kind, req, inventory_checks=not req.after)
        if req.after:
            return req
        if kind == "CreateVm":
            await self._inventory(inventory.check_new_vm, self.db, req.name, req.host)
            if req.disks:
                await self._inventory(inventory.plan_disks, self.db,
                                      PlanDisksInput(vm=req.name, host=req.host, disks=req.disks))
        elif kind in STORAGE_KINDS:
            await self.check_storage(kind, req)
        elif (kind in ("StartVm", "StopVm", "DestroyVm")
              and await asyncio.to_thread(inventory.get_vm, self.db, req.name) is None):
            raise RequestError("name", f"no VM named {req.name!r}")
        return req

    async def submit_batch(self, items: list[BatchItem]) -> list[tuple[str, TaskHandle]]:
        """Submit several tasks with dependencies among them (see ``starter.batch``); returns
        (key, handle) in submission order. Nothing is submitted unless the whole batch is valid;
        if submitting fails half-way, the tasks already submitted are cancelled."""
        try:
            plan = plan_batch(items, {k: v.request for k, v in KINDS.items()},
                              {k: v.slug for k, v in KINDS.items()})
        except BatchError as err:
            raise RequestError(err.field, err.reason) from None
        ready = []
        for task in plan:
            req = task.request if task.in_batch_after else await self.checked(task.kind,
                                                                               task.request)
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
        task_id = task_id or "-".join(p for p in (spec.slug, subject, uuid.uuid4().hex[:8]) if p)
        if req.after:
            await self._check_prerequisites(task_id, req.after)
        in_line = bool(resources) and req.ordered and not req.after
        memo: dict[str, Any] = {"resources": resources, "after": req.after,
                                "requested_by": req.requested_by}
        if in_line:  # its place in line, and the resources themselves if they are free
            capacities = {r: capacity_of(r, self.settings) for r in resources}
            claimed, _ = await asyncio.to_thread(ordering.acquire, self.db, task_id, kind,
                                                 capacities)
            memo[GRANTED_AT_SUBMIT] = claimed.granted
        try:
            handle = await self.temporal.start_workflow(
                spec.workflow.run, req, id=task_id, task_queue=self.settings.task_queue,
                search_attributes=self._attributes(kind, resources, req), memo=memo)
        except BaseException:
            if in_line:  # never started: give its place back
                await asyncio.to_thread(ordering.release, self.db, task_id)
            raise
        return TaskHandle(handle, kind)

    def _attributes(self, kind: str, resources: list[str], req: TaskRequest
                    ) -> TypedSearchAttributes:
        pairs: list[SearchAttributePair[Any]] = [
            SearchAttributePair(TASK_KIND, kind), SearchAttributePair(TASK_STATE, "new"),
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
        try:
            await self.temporal.get_workflow_handle(task_id).cancel()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise RequestError("id", f"no task {task_id!r}") from None
            raise

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
        try:
            return await asyncio.to_thread(fn, *args)
        except ApplicationError as err:
            info = error_info(err)
            if info.retryable:  # the inventory is unreachable: not the request's fault
                raise
            raise RequestError(info.field, info.message.removeprefix(f"{info.field}: ")) from None


def caller_identity() -> str:
    """The OS user running this process (its uid if it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _result_type(kind: str) -> type[Any] | None:
    return KINDS[kind].result_type if kind in KINDS else None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _probe_uri(spec: HostSpec) -> None:
    hv = Hypervisors()
    try:
        with hv.call("connect to", spec.uri, spec.name):
            pass
    except ApplicationError as err:
        raise RequestError("uri", f"cannot reach {spec.uri}: {error_info(err).message}") from None
    finally:
        hv.close()
