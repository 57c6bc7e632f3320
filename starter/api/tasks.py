"""Task routes: submit a task of every kind of the registry, batches, list, show and cancel.

    POST /tasks/{Kind}?task_id=ID   body: the kind's request model (CreateVm: CreateVmRequest)
    POST /batches                   {"tasks": [BatchItem…], "after": [task ids]}
    GET  /tasks?kind=&vm=&host=&pool=&state=&limit=
    GET  /tasks/{id}
    GET  /tasks/{id}/moves          a ClearHost/RestoreHost task's moves and ETA
    POST /tasks/{id}/cancel

A submission is checked (the request model, then the caller's ``operate`` permission on every
resource the request declares, then the starter's inventory check) before any task exists; a
refusal leaves nothing behind. ``requested_by`` is the authenticated subject: a request naming
someone else is refused. Dry runs are submissions too (``ClearHost`` with ``dry_run``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import Field

from starter.api.auth import Principal, User, can_read, host_clusters, require
from starter.api.deps import Client, Db
from starter.api.errors import NOT_FOUND_RESPONSE, ApiError, not_found
from starter.batch import MAX_BATCH_TASKS, BatchItem, plan_batch
from starter.errors import RequestError
from starter.tasks import TaskStatus
from taskomatic.models import HostTaskProgress, Model, Name, TaskId, TaskRequest, TaskState
from workflows.kinds import KINDS, TaskKind

router = APIRouter(tags=["tasks"])


class Submitted(Model):
    """A task that was started: its id (the Temporal workflow id) and kind."""

    id: str
    kind: str


class BatchRequest(Model):
    """Several tasks with dependencies among them (see ``starter.batch``); ``after``: task ids
    the whole batch waits for."""

    tasks: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH_TASKS)]
    after: Annotated[list[TaskId], Field(max_length=100)] = []


class SubmittedBatch(Model):
    tasks: list[Submitted]
    keys: list[str]


class CancelRequested(Model):
    id: str
    cancel_requested: bool = True


def as_requester(user: Principal, request: dict[str, Any] | TaskRequest, field: str) -> None:
    """Refuse a request that names another requester than the caller (``field``)."""
    claimed = (request.get("requested_by") if isinstance(request, dict)
               else request.requested_by)
    if claimed not in (None, user.subject):
        raise RequestError(field, f"is the authenticated subject ({user.subject!r}); a request "
                                  f"cannot name another (got {claimed!r})")


def _submit_route(kind: TaskKind) -> None:
    async def submit(body: TaskRequest, user: User, client: Client, db: Db,
                     task_id: Annotated[TaskId | None, Query()] = None) -> Submitted:
        as_requester(user, body, "requested_by")
        req = body.model_copy(update={"requested_by": user.subject})
        await require(user, "operate", req.resources(), db, getattr(req, "host", None),
                      getattr(req, "cluster", None))
        handle = await client.submit(kind.name, await client.checked(kind.name, req), task_id)
        return Submitted(id=handle.id, kind=handle.kind)

    submit.__annotations__["body"] = Annotated[kind.request, Body()]
    submit.__name__ = f"submit_{kind.name}"
    router.add_api_route(f"/tasks/{kind.name}", submit, methods=["POST"], status_code=202,
                         response_model=Submitted, summary=f"Submit a {kind.name} task",
                         description=(kind.request.__doc__ or "").strip() or None,
                         responses={409: {"description": "the task id is taken"}})


for _kind in KINDS.values():
    if _kind.method is not None:
        _submit_route(_kind)


@router.post("/batches", status_code=202, response_model=SubmittedBatch)
async def submit_batch(batch: BatchRequest, user: User, client: Client, db: Db
                       ) -> SubmittedBatch:
    """Submit several tasks at once: all are checked (requests, references, cycles, the
    caller's permissions) before any is submitted."""
    items = []
    for i, item in enumerate(batch.tasks):
        as_requester(user, item.request, f"tasks[{i}].request.requested_by")
        items.append(item.model_copy(update={
            "after": [*item.after, *batch.after],
            "request": {**item.request, "requested_by": user.subject}}))
    try:
        plan = plan_batch(items, KINDS)
        for task in plan:
            await require(user, "operate", task.request.resources(), db,
                          getattr(task.request, "host", None),
                          getattr(task.request, "cluster", None))
        submitted = await client.submit_batch(items)
    except RequestError as err:  # the library names items[i]; this body has tasks[i]
        if err.field and err.field.startswith("items"):
            raise RequestError("tasks" + err.field.removeprefix("items"), err.reason) from None
        raise
    return SubmittedBatch(tasks=[Submitted(id=h.id, kind=h.kind) for _, h in submitted],
                          keys=[key for key, _ in submitted])


@router.get("/tasks", response_model=list[TaskStatus])
async def list_tasks(user: User, client: Client, db: Db,
                     kind: Annotated[str | None, Query()] = None,
                     vm: Annotated[Name | None, Query()] = None,
                     host: Annotated[Name | None, Query()] = None,
                     pool: Annotated[Name | None, Query()] = None,
                     state: Annotated[TaskState | None, Query()] = None,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[TaskStatus]:
    """Tasks, newest first, that the caller may read (the CLI's ``tasks list`` filters)."""
    if kind is not None and kind not in KINDS:
        raise RequestError("kind", f"unknown task kind {kind!r} (known: "
                                   f"{', '.join(sorted(KINDS))})")
    found = await client.tasks(kind=kind, vm=vm, host=host, pool=pool, state=state, limit=limit)
    clusters = await host_clusters(user, db)
    return [t for t in found if can_read(user, t.resources, _located(t), clusters)]


@router.get("/tasks/{task_id}", response_model=TaskStatus, responses=NOT_FOUND_RESPONSE)
async def show_task(task_id: Annotated[TaskId, Path()], user: User, client: Client, db: Db
                    ) -> TaskStatus:
    """One task: state, what it waits on, steps, result or error."""
    return await _readable(task_id, user, client, db)


@router.get("/tasks/{task_id}/moves", response_model=HostTaskProgress | None,
            responses=NOT_FOUND_RESPONSE)
async def task_moves(task_id: Annotated[TaskId, Path()], user: User, client: Client, db: Db
                     ) -> HostTaskProgress | None:
    """A ClearHost or RestoreHost task's moves (as ``host clear --wait`` shows them): VMs
    moved, in flight, remaining and failed, the ETA, the VMs moving; ``null`` while the task
    cannot be asked yet (queued). 400 on ``id`` for a task of another kind; 404 as
    ``GET /tasks/{id}``."""
    status = await _readable(task_id, user, client, db)
    if status.kind not in _MOVING_KINDS:
        raise RequestError("id", f"task {task_id!r} is a {status.kind}: only "
                                 f"{' and '.join(_MOVING_KINDS)} tasks have moves")
    return await client.host_moves(task_id)


_MOVING_KINDS = ("ClearHost", "RestoreHost")


async def _readable(task_id: str, user: Principal, client: Client, db: Db) -> TaskStatus:
    """Task ``task_id``'s status if ``user`` may read it; ApiError 404 on ``id`` if it is
    unknown or not readable (not telling which)."""
    try:
        status = await client.task(task_id).describe()
    except RequestError as err:
        raise not_found(err) from None
    if not can_read(user, status.resources, _located(status), await host_clusters(user, db)):
        raise ApiError(404, f"no task {task_id!r}", field="id")  # do not tell it exists
    return status


@router.post("/tasks/{task_id}/cancel", status_code=202, response_model=CancelRequested)
async def cancel_task(task_id: Annotated[TaskId, Path()], user: User, client: Client, db: Db
                      ) -> CancelRequested:
    """Cancel a task: it undoes what it did and releases what it held. Needs ``operate`` on
    every resource of the task."""
    try:
        status = await client.task(task_id).describe()
        if not can_read(user, status.resources, _located(status),
                        await host_clusters(user, db)):
            raise RequestError("id", f"no task {task_id!r}")
        await require(user, "operate", status.resources, db)
        await client.cancel(task_id)
    except RequestError as err:
        raise not_found(err) if err.field == "id" else err from None
    return CancelRequested(id=task_id)


def _located(task: TaskStatus) -> dict[str, str]:
    """Where the task's VM and pool lie, as far as the task's record says."""
    if not task.host:
        return {}
    return {r: task.host for r in task.resources if r.startswith(("vm:", "pool:"))}
