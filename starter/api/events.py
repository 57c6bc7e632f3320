"""Audit-log and live-progress routes.

    GET /tasks/{id}/log              the task's story (task_events), oldest first
    GET /events?since=CURSOR&limit=  the audit stream: events after CURSOR (an event id)
    GET /tasks/{id}/events           Server-Sent Events: the task's progress, log and end
    GET /events/stream?since=CURSOR  Server-Sent Events: the audit stream, live

SSE event names: ``progress`` (data: the task's ``TaskProgress``: steps, percent, phase, state,
``waiting_on``), ``log`` (data: a ``TaskEvent``), ``end`` (data: ``{"task_id", "state"}``; the
stream then closes). Each ``log`` event's SSE id is the event's id, so a client resumes with
``since``. Progress comes from the task's ``progress`` query while Temporal has it; the log from
PostgreSQL, so a task whose Temporal history is gone still shows its story and end.

Who may read: a task's events need ``read`` on one of the resources its submission named (a task
not submitted through the starter, e.g. a ClearHost's MigrateVm, needs ``read`` on everything);
the audit stream shows only the events of tasks the caller may read. A task the caller may not
read is answered 404, as for ``GET /tasks/{id}``. Host and cluster grants reach a task's VM or
pool by where the inventory has it now (as for submissions: ``auth.require``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from starter.api.auth import Principal, User, can_read, host_clusters, located_for
from starter.api.deps import Client, Db
from starter.api.errors import ApiError
from starter.client import TaskomaticClient
from starter.events import MAX_EVENTS_PAGE
from taskomatic.inventory.db import Database
from taskomatic.models import TaskId, TaskProgress
from taskomatic.models.events import TaskEvent

router = APIRouter(tags=["events"])

# How often a live stream looks for news (progress query, new log rows), in seconds.
POLL_SECONDS = 0.5
# How long a stream waits, once the task has ended, for its end to reach the log (the worker
# records it from Temporal's list of closed workflows within about a second).
END_GRACE_SECONDS = 10.0
_ENDED = ("complete", "error", "cancelled")


@router.get("/tasks/{task_id}/log", response_model=list[TaskEvent])
async def task_log(task_id: Annotated[TaskId, Path()], user: User, client: Client, db: Db
                   ) -> list[TaskEvent]:
    """The task's audit log, oldest first: submitted (who, what, resources), each step and undo
    started / finished / failed (attempt, duration, detail or error), waits (on what), end
    (state, error). Kept after Temporal's history is gone (``task_events_retention_days``)."""
    events = await client.task_log(task_id)
    if not events:
        raise ApiError(404, f"no task {task_id!r} in the audit log", field="id")
    await _readable(user, client, db, task_id)
    return events


@router.get("/events", response_model=list[TaskEvent])
async def audit_events(user: User, client: Client, db: Db,
                       since: Annotated[int, Query(ge=0, le=2**62)] = 0,
                       limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE)] = 500
                       ) -> list[TaskEvent]:
    """The audit stream: events with an id above ``since``, oldest first, at most ``limit``,
    of the tasks the caller may read. The next cursor is the last id returned (or, if none
    returned, ``since``)."""
    return await _visible(user, client, db, await client.events(since, limit))


@router.get("/tasks/{task_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "progress, log and end events (SSE)"}})
async def task_events(task_id: Annotated[TaskId, Path()], user: User, client: Client, db: Db,
                      since: Annotated[int, Query(ge=0, le=2**62)] = 0) -> EventSourceResponse:
    """Live progress of one task as Server-Sent Events (see the module's doc); ends after the
    task's ``end``."""
    handle = client.task(task_id)
    if not await client.task_log(task_id) and await handle.progress() is None:
        raise ApiError(404, f"no task {task_id!r}", field="id")
    await _readable(user, client, db, task_id)
    return EventSourceResponse(_task_stream(client, task_id, since))


@router.get("/events/stream", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "log events of the audit stream (SSE)"}})
async def audit_stream(user: User, client: Client, db: Db,
                       since: Annotated[int | None, Query(ge=0, le=2**62)] = None
                       ) -> EventSourceResponse:
    """The audit stream, live: a ``log`` event for each new event of a task the caller may
    read. Without ``since`` it starts at the newest event (only what happens from now on)."""
    if since is None:
        since = await client.newest_event_id()
    return EventSourceResponse(_audit_stream(user, client, db, since))


async def _task_stream(client: TaskomaticClient, task_id: str, since: int
                       ) -> AsyncIterator[ServerSentEvent]:
    handle = client.task(task_id)
    shown: TaskProgress | None = None
    ended: str | None = None  # the task's end state: from its progress or its log
    grace = END_GRACE_SECONDS
    while True:
        progress = await handle.progress()
        if progress is not None and progress != shown:
            shown = progress
            yield ServerSentEvent(progress.model_dump_json(), event="progress")
        if progress is not None and progress.state in _ENDED:
            ended = progress.state
        logged_end = False
        for event in [e for e in await client.task_log(task_id) if e.id > since]:
            since = event.id
            yield ServerSentEvent(event.model_dump_json(), event="log", id=str(event.id))
            if event.kind == "end":
                ended, logged_end = str(event.detail.get("state", "ended")), True
        if ended is not None and (logged_end or grace <= 0):
            yield ServerSentEvent(json.dumps({"task_id": task_id, "state": ended}), event="end")
            return
        if ended is not None:
            grace -= POLL_SECONDS
        await asyncio.sleep(POLL_SECONDS)


async def _audit_stream(user: Principal, client: TaskomaticClient, db: Database, since: int
                        ) -> AsyncIterator[ServerSentEvent]:
    while True:
        page = await client.events(since, MAX_EVENTS_PAGE)
        if page:
            since = page[-1].id
        for event in await _visible(user, client, db, page):
            yield ServerSentEvent(event.model_dump_json(), event="log", id=str(event.id))
        if len(page) < MAX_EVENTS_PAGE:
            await asyncio.sleep(POLL_SECONDS)


async def _readable(user: Principal, client: TaskomaticClient, db: Database, task_id: str
                    ) -> None:
    if not await _readable_tasks(user, client, db, [task_id]):
        raise ApiError(404, f"no task {task_id!r}", field="id")  # do not tell it exists


async def _visible(user: Principal, client: TaskomaticClient, db: Database,
                   events: list[TaskEvent]) -> list[TaskEvent]:
    readable = await _readable_tasks(user, client, db, [e.task_id for e in events])
    return [e for e in events if e.task_id in readable]


async def _readable_tasks(user: Principal, client: TaskomaticClient, db: Database,
                          task_ids: list[str]) -> set[str]:
    """Those of ``task_ids`` the caller may read: ``read`` on one resource of each, a VM or
    pool placed by the inventory when the caller's grants are scoped to hosts or clusters."""
    if not task_ids:  # an empty page of the audit stream: nothing to look up
        return set()
    resources = await client.task_resources(task_ids)
    located = await located_for(user, db, (r for rs in resources.values() for r in rs))
    clusters = await host_clusters(user, db)
    return {t for t in set(task_ids)
            if can_read(user, resources.get(t, []), located, clusters)}
