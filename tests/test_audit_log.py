"""The audit log (task_events): each task's story — submitted, steps, undos, waits, end — written
by the starter, the worker's interceptor and the task's end, read back after Temporal's own
history of the task is deleted."""

from __future__ import annotations

import asyncio

import pytest
from cli_helpers import cli_on_stack, run_cli_async
from helpers import resource_held, story
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.inventory.events import record_event, sweep_events, task_log
from taskomatic.models import CreateVmRequest, StopVmRequest
from taskomatic.models.events import TaskEvent, TaskEventInput
from taskomatic.settings import Settings


def kinds(events: list[TaskEvent]) -> list[str]:
    return [e.kind for e in events]


async def delete_history(client: TaskomaticClient, task_id: str) -> None:
    """Delete the task's execution and history from Temporal, and wait until it is gone."""
    await client.temporal.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(namespace=client.temporal.namespace,
                                       workflow_execution=WorkflowExecution(workflow_id=task_id)))
    for _ in range(100):
        try:
            await client.temporal.get_workflow_handle(task_id).describe()
        except RPCError as err:
            assert err.status == RPCStatusCode.NOT_FOUND
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} still has a history")


async def test_a_task_keeps_its_story_after_its_history_is_deleted(
        client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("audit")
    task = await client.create_vm(CreateVmRequest(name=name, host=host.name, start=True,
                                                  requested_by="alice"))
    await task.result()
    steps = [r.name for r in (await task.progress()).steps]
    before = await story(client, task.id)
    await delete_history(client, task.id)

    events = await client.task_log(task.id)
    assert events == before
    assert events[0].kind == "submitted"
    assert events[0].detail["requested_by"] == "alice"
    assert f"vm:{name}" in events[0].detail["resources"]
    assert events[0].detail["request"]["name"] == name
    assert events[-1].kind == "end" and events[-1].detail["state"] == "complete"
    # Every step of the runbook started and finished, under the runbook's own names.
    started = [e.step for e in events if e.kind == "step_started"]
    finished = [e.step for e in events if e.kind == "step_finished"]
    assert started == finished
    # (a wait for resources that were free at submission ran nothing)
    # (a wait for resources that were free at submission ran nothing; giving them back is no
    # runbook step and is named by its activity)
    assert [s for s in started if s != "release_resources"] == [
        s for s in steps if not s.startswith("wait for ")]
    for e in events:
        if e.kind == "step_finished":
            assert e.duration_ms is not None and e.attempt == 1
            assert e.detail["activity"]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_failed_task_logs_its_failed_step_its_undos_and_its_error(
        client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host(vcpus=2)
    task = await client.create_vm(CreateVmRequest(name=lab.vm_name("big"), host=host.name,
                                                  vcpus=4))
    with pytest.raises(TaskError) as failed:
        await task.result()
    events = await story(client, task.id)
    failure = next(e for e in events if e.kind == "step_failed")
    assert failure.step == failed.value.failure.step
    assert failure.detail["error_type"] == failed.value.failure.error_type
    undone = [e.step for e in events if e.kind == "undo_finished"]
    assert undone == failed.value.failure.compensated
    assert "undo_started" in kinds(events)
    end = events[-1]
    assert end.kind == "end" and end.detail["state"] == "error"
    assert end.detail["error"]["message"] == failed.value.failure.message


async def test_a_task_in_line_logs_what_it_waits_on_and_a_cancel_its_end(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    host = lab.host()
    name = lab.vm_name("line")
    async with resource_held(db, client.temporal, f"vm:{name}") as holder:
        create = await client.create_vm(CreateVmRequest(name=name, host=host.name, start=True))
        for _ in range(200):  # until it has logged its wait (at most ~10 s)
            if any(e.kind == "waiting" for e in await client.task_log(create.id)):
                break
            await asyncio.sleep(0.05)
    await create.result()
    events = await story(client, create.id)
    wait = next(e for e in events if e.kind == "waiting")
    assert wait.detail["on"] == [f"vm:{name} held by {holder}"]
    assert wait.step == f"wait for vm:{name}"
    assert events[-1].kind == "end" and events[-1].detail["state"] == "complete"
    after = await client.stop_vm(StopVmRequest(name=lab.vm_name("absent-later"),
                                               after=[create.id]))
    await after.cancel()
    with pytest.raises(TaskError):
        await after.result()
    events = await story(client, after.id)
    # The wait's activity, left by the cancel, may still log its attempt after the end.
    ends = [e for e in events if e.kind == "end"]
    assert [e.detail["state"] for e in ends] == ["cancelled"]
    assert events[0].kind == "submitted" and events[0].detail["after"] == [create.id]


def test_recording_an_event_twice_adds_it_once_and_the_sweep_keeps_recent_ones(
        db: Database) -> None:
    event = TaskEventInput(key="audit-test/run/1/1/started", task_id="audit-test-once",
                           kind="step_started", step="reserve capacity", attempt=1)
    assert record_event(db, event) is True
    assert record_event(db, event) is False
    assert len(task_log(db, "audit-test-once")) == 1
    with db.transaction() as cur:
        cur.execute("INSERT INTO task_events (key, task_id, kind, at) VALUES"
                    " ('audit-test/old', 'audit-test-once', 'end', now() - interval '40 days')")
    assert sweep_events(db, retention_days=30) >= 1
    assert [e.key for e in task_log(db, "audit-test-once")] == [event.key]


async def test_the_audit_stream_pages_by_cursor(client: TaskomaticClient, db: Database) -> None:
    start = await client.newest_event_id()  # earlier tests of the session wrote many events
    for i in range(3):
        record_event(db, TaskEventInput(key=f"audit-stream-{i}", task_id="audit-stream",
                                        kind="step_started", step=f"s{i}"))
    everything = await client.events(since=start, limit=1000)
    mine = [e for e in everything if e.task_id == "audit-stream"]
    first = await client.events(since=mine[0].id - 1, limit=2)
    assert [e.id for e in first] == [e.id for e in everything if e.id >= mine[0].id][:2]
    rest = await client.events(since=first[-1].id, limit=1000)
    assert all(e.id > first[-1].id for e in rest)
    with pytest.raises(Exception, match="limit"):
        await client.events(limit=0)


async def test_cli_tasks_log(client: TaskomaticClient, lab: Lab, monkeypatch: pytest.MonkeyPatch,
                             temporal_env: WorkflowEnvironment, settings: Settings,
                             worker: Worker) -> None:
    host = lab.host()
    task = await client.create_vm(CreateVmRequest(name=lab.vm_name("cli"), host=host.name))
    await task.result()
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        code, err = await run_cli_async(["tasks", "log", task.id, "--json"])
        assert code == 0, err
        code, err = await run_cli_async(["tasks", "log", "no-such-task-1234"])
        assert code == 2 and "id" in err
