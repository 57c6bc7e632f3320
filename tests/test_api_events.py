"""The audit log and live progress over HTTP: GET /tasks/{id}/log, GET /events (cursor) and the
Server-Sent Events of GET /tasks/{id}/events, on the real stack."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from api_helpers import bearer, subject_with
from api_server import served
from helpers import resource_held, story

from conftest import Lab
from starter.api.app import create_app
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """(event name, JSON data) of each event read from an event stream's lines (no pings)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if "event" in fields:
                yield fields["event"], json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":") and ": " in line:
            key, value = line.split(": ", 1)
            fields[key] = value


async def test_a_tasks_log_is_served_to_who_may_read_it(
        http: httpx.AsyncClient, client: TaskomaticClient, db: Database, lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("log")
    task = await client.create_vm(CreateVmRequest(name=name, host=host.name))
    await task.result()
    await story(client, task.id)  # its end is recorded
    _, reader = subject_with(db, [("viewer", f"vm:{name}")])
    _, stranger = subject_with(db, [("viewer", f"vm:{lab.vm_name('other')}")])

    log = await http.get(f"/tasks/{task.id}/log", headers=bearer(reader))
    assert log.status_code == 200, log.text
    kinds = [e["kind"] for e in log.json()]
    assert kinds[0] == "submitted" and kinds[-1] == "end" and "step_finished" in kinds
    hidden = await http.get(f"/tasks/{task.id}/log", headers=bearer(stranger))
    assert hidden.status_code == 404 and hidden.json()["field"] == "id"
    unknown = await http.get("/tasks/vm-create-nothing-00000000/log", headers=bearer(reader))
    assert unknown.status_code == 404
    assert (await http.get(f"/tasks/{task.id}/log")).status_code == 401
    # Host and cluster grants reach the task's VM where the inventory has it.
    cluster = inventory.get_host(db, host.name).cluster  # type: ignore[union-attr]
    for scope in (f"host:{host.name}", f"cluster:{cluster}"):
        _, scoped = subject_with(db, [("viewer", scope)])
        seen = await http.get(f"/tasks/{task.id}/log", headers=bearer(scoped))
        assert seen.status_code == 200 and seen.json() == log.json(), (scope, seen.text)
    _, elsewhere = subject_with(db, [("viewer", f"host:{lab.host(2).name}")])
    assert (await http.get(f"/tasks/{task.id}/log", headers=bearer(elsewhere))).status_code == 404

    # The audit stream: a cursor walk sees the task's events, a stranger sees none of them.
    first = log.json()[0]["id"]
    page = (await http.get("/events", headers=bearer(reader),
                           params={"since": first - 1, "limit": 1000})).json()
    assert [e["id"] for e in page if e["task_id"] == task.id] == [e["id"] for e in log.json()]
    assert {e["task_id"] for e in page} == {task.id}  # nothing else is readable to it
    other = (await http.get("/events", headers=bearer(stranger),
                            params={"since": first - 1})).json()
    assert all(e["task_id"] != task.id for e in other)
    bad = await http.get("/events", headers=bearer(reader), params={"since": -1})
    assert bad.status_code == 400 and bad.json()["field"] == "since"


async def test_live_progress_streams_the_wait_the_steps_and_the_end(
        client: TaskomaticClient, settings: Settings, db: Database, lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("live")
    _, token = subject_with(db, [("viewer", "*")])
    events: list[tuple[str, Any]] = []
    async with served(create_app(settings, client, db)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http, \
            contextlib.AsyncExitStack() as hold:
        holder = await hold.enter_async_context(resource_held(db, client.temporal,
                                                              f"vm:{name}"))
        task = await client.create_vm(CreateVmRequest(name=name, host=host.name, start=True))
        async with http.stream("GET", f"/tasks/{task.id}/events",
                               headers=bearer(token)) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            stream = sse_events(answer.aiter_lines())
            async for event in stream:  # the wait shows live ...
                events.append(event)
                if event[0] == "progress" and event[1]["waiting_on"]:
                    break
            waiting = events[-1][1]["waiting_on"]
            await hold.aclose()  # ... the holder lets go, and the task goes on to its end
            async for event in stream:
                events.append(event)
    assert waiting == [f"vm:{name} held by {holder}"]
    logged = [d["kind"] for e, d in events if e == "log"]
    assert logged[0] == "submitted" and "waiting" in logged and logged[-1] == "end"
    steps = [s["name"] for e, d in events if e == "progress" for s in d["steps"]]
    assert "start domain" in steps
    assert events[-1] == ("end", {"task_id": task.id, "state": "complete"})
