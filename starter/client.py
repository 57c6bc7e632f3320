"""The starter library: what a web UI, a script or the CLI uses to drive taskomatic.

    client = await TaskomaticClient.connect()
    task = await client.create_vm(CreateVmRequest(name="web1", memory_mib=1024, start=True))
    result = await task.result()          # raises TaskError with a TaskFailure on failure

Requests are validated (pydantic, then an advisory inventory check) before any task exists, so a
bad request raises ``RequestError`` naming the field and leaves nothing behind. Reads of hosts and
VMs come straight from the inventory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import inventory
from activities.db import Database, get_database
from activities.hypervisor import Hypervisors
from starter.client_hosts import HOST_SLUGS, HostTasks
from taskomatic.errors import error_info
from taskomatic.migration import HostTaskResult
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostRecord,
    HostSpec,
    Model,
    StartVmRequest,
    StopVmRequest,
    TaskFailure,
    TaskProgress,
    TaskRequest,
    VmRecord,
    VmTaskResult,
)
from taskomatic.settings import Settings, get_settings
from taskomatic.temporal import TASK_HOST, TASK_KIND, TASK_VM, connect_temporal
from workflows.clear_host import ActivateHost, ClearHost, RestoreHost
from workflows.migration import MigrateVm
from workflows.vm_lifecycle import CreateVm, DestroyVm, StartVm, StopVm

TaskState = Literal["running", "complete", "error", "cancelled", "terminated", "timed_out"]
_STATES: dict[WorkflowExecutionStatus | None, TaskState] = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "complete",
    WorkflowExecutionStatus.FAILED: "error",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "running",
}
_WORKFLOWS: dict[str, Any] = {"CreateVm": CreateVm, "StartVm": StartVm, "StopVm": StopVm,
                              "DestroyVm": DestroyVm, "MigrateVm": MigrateVm,
                              "ClearHost": ClearHost, "ActivateHost": ActivateHost,
                              "RestoreHost": RestoreHost}
_SLUGS = {"CreateVm": "vm-create", "StartVm": "vm-start", "StopVm": "vm-stop",
          "DestroyVm": "vm-destroy", "MigrateVm": "vm-migrate", **HOST_SLUGS}
_RESULT_TYPES: dict[str, type[Model]] = {kind: HostTaskResult for kind in HOST_SLUGS}


class RequestError(ValueError):
    """A request refused before any task was started; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class TaskError(Exception):
    """A task that ended in error, cancellation or termination."""

    def __init__(self, failure: TaskFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def request_error(err: ValidationError) -> RequestError:
    """The first problem of a pydantic validation error, as ``field: reason``."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return RequestError(field, first["msg"].removeprefix("Value error, "))


def validated(model: type[Model], **fields: Any) -> Any:
    """Build a request model, turning a validation error into a ``RequestError``."""
    try:
        return model(**fields)
    except ValidationError as err:
        raise request_error(err) from None


class TaskStatus(Model):
    id: str
    kind: str
    state: TaskState
    vm: str | None = None
    host: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: TaskProgress | None = None
    result: VmTaskResult | HostTaskResult | None = None
    error: TaskFailure | None = None


def _failure_of(task_id: str, kind: str, err: BaseException) -> TaskFailure:
    cause = err.cause if isinstance(err, WorkflowFailureError) else err
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0],
                                                                             dict):
        try:
            return TaskFailure.model_validate(cause.details[0])
        except ValidationError:
            pass
    info = error_info(cause) if cause is not None else None
    message = info.message if info else str(err)
    return TaskFailure(task_id=task_id, kind=kind, step="-",
                       error_type=type(cause).__name__ if cause else "Unknown", message=message)


class TaskHandle:
    """One submitted task."""

    def __init__(self, handle: WorkflowHandle[Any, Any], kind: str) -> None:
        self._handle = handle
        self.id = handle.id
        self.kind = kind

    async def result(self) -> VmTaskResult:
        try:
            return await self._handle.result()  # type: ignore[no-any-return]
        except WorkflowFailureError as err:
            raise TaskError(_failure_of(self.id, self.kind, err)) from None

    async def progress(self) -> TaskProgress | None:
        try:
            return await self._handle.query("progress", result_type=TaskProgress)  # type: ignore[no-any-return]
        except RPCError:
            return None

    async def watch(self, on_progress: Callable[[TaskProgress | None], None],
                    every_seconds: float = 0.2) -> VmTaskResult:
        """Report the task's progress every ``every_seconds`` until it ends (a display refresh;
        the task itself is event-driven); returns its result or raises ``TaskError``."""
        waiter = asyncio.ensure_future(self.result())
        while not waiter.done():
            on_progress(await self.progress())
            await asyncio.wait([waiter], timeout=every_seconds)
        on_progress(await self.progress())
        return waiter.result()

    async def describe(self) -> TaskStatus:
        desc = await self._handle.describe()
        if desc.workflow_type in _RESULT_TYPES:  # not a VM task: read its own result type
            self._handle = self._handle._client.get_workflow_handle(
                self.id, result_type=_RESULT_TYPES[desc.workflow_type])
        attrs = desc.typed_search_attributes
        status = TaskStatus(
            id=self.id, kind=desc.workflow_type, state=_STATES.get(desc.status, "running"),
            vm=attrs.get(TASK_VM), host=attrs.get(TASK_HOST), started_at=desc.start_time,
            finished_at=desc.close_time,
        )
        status.progress = await self.progress()
        if status.state == "complete":
            status.result = await self.result()
        elif status.state != "running":
            try:
                await self.result()
            except TaskError as err:
                status.error = err.failure
            except Exception as err:  # cancelled / terminated / timed out
                status.error = _failure_of(self.id, self.kind, err)
        return status

    async def cancel(self) -> None:
        await self._handle.cancel()


class TaskomaticClient(HostTasks):
    def __init__(self, temporal: Client, settings: Settings, db: Database) -> None:
        self.temporal = temporal
        self.settings = settings
        self.db = db

    @classmethod
    async def connect(cls, settings: Settings | None = None) -> TaskomaticClient:
        settings = settings or get_settings()
        temporal = await connect_temporal(settings)
        return cls(temporal, settings, get_database(settings.database_url))

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
        await self._inventory(inventory.check_new_vm, self.db, req.name, req.host)
        return await self._submit("CreateVm", req, req.name, task_id)

    async def start_vm(self, req: StartVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self._submit_for_existing("StartVm", req, req.name, task_id)

    async def stop_vm(self, req: StopVmRequest, task_id: str | None = None) -> TaskHandle:
        if req.timeout_seconds is None:
            req = req.model_copy(update={"timeout_seconds": self.settings.stop_timeout_seconds})
        return await self._submit_for_existing("StopVm", req, req.name, task_id)

    async def destroy_vm(self, req: DestroyVmRequest, task_id: str | None = None) -> TaskHandle:
        return await self._submit_for_existing("DestroyVm", req, req.name, task_id)

    def task(self, task_id: str, kind: str = "") -> TaskHandle:
        handle = self.temporal.get_workflow_handle(
            task_id, result_type=_RESULT_TYPES.get(kind, VmTaskResult))
        return TaskHandle(handle, kind)

    async def tasks(self, *, kind: str | None = None, vm: str | None = None,
                    host: str | None = None, limit: int = 200) -> list[TaskStatus]:
        """Recent tasks, newest first, from Temporal's visibility store."""
        clauses = [f"TaskQueue = '{_quote(self.settings.task_queue)}'"]
        for key, value in ((TASK_KIND, kind), (TASK_VM, vm), (TASK_HOST, host)):
            if value:
                clauses.append(f"{key.name} = '{_quote(value)}'")
        found: list[TaskStatus] = []
        async for wf in self.temporal.list_workflows(" AND ".join(clauses), limit=limit):
            attrs = wf.typed_search_attributes
            found.append(TaskStatus(
                id=wf.id, kind=wf.workflow_type, state=_STATES.get(wf.status, "running"),
                vm=attrs.get(TASK_VM), host=attrs.get(TASK_HOST), started_at=wf.start_time,
                finished_at=wf.close_time))
        return found

    async def _submit_for_existing(self, kind: str, req: TaskRequest, vm: str,
                                   task_id: str | None) -> TaskHandle:
        if await asyncio.to_thread(inventory.get_vm, self.db, vm) is None:
            raise RequestError("name", f"no VM named {vm!r}")
        return await self._submit(kind, req, vm, task_id)

    async def _submit(self, kind: str, req: TaskRequest, vm: str, task_id: str | None
                      ) -> TaskHandle:
        task_id = task_id or f"{_SLUGS[kind]}-{vm}-{uuid.uuid4().hex[:8]}"
        attrs = [SearchAttributePair(TASK_KIND, kind), SearchAttributePair(TASK_VM, vm)]
        pinned_host = getattr(req, "host", None)
        if pinned_host:  # known before placement; the workflow sets it otherwise
            attrs.append(SearchAttributePair(TASK_HOST, pinned_host))
        handle = await self.temporal.start_workflow(
            _WORKFLOWS[kind].run, req, id=task_id, task_queue=self.settings.task_queue,
            search_attributes=TypedSearchAttributes(attrs),
        )
        return TaskHandle(handle, kind)

    async def _inventory(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except ApplicationError as err:
            info = error_info(err)
            if info.retryable:  # the inventory is unreachable: not the request's fault
                raise
            raise RequestError(info.field, info.message.removeprefix(f"{info.field}: ")) from None


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
