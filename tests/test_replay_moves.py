"""Replay of the moving tasks: MigrateVm, ClearHost (every run of a continued-as-new one),
ActivateHost, RestoreHost, and a StartVm that moved its VM off a host in maintenance.

Recorded histories of these kinds are kept in ``tests/histories/`` too (``test_replay.py``
replays them all); record them with ``TASKOMATIC_RECORD_HISTORIES=1``.
"""

from __future__ import annotations

import os

from helpers import force_host_state, only_hosts_up
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from test_replay import HISTORIES

from conftest import Lab
from starter.client import TaskHandle, TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreateVmRequest,
    HostState,
    MigrateVmRequest,
    RestoreHostRequest,
    StartVmRequest,
)
from worker import TASK_WORKFLOWS as WORKFLOWS


async def _runs(client: TaskomaticClient, handle: TaskHandle) -> list[WorkflowHistory]:
    """Every run of a task, first to last, following continue-as-new."""
    runs: list[WorkflowHistory] = []
    run_id: str | None = handle._handle.first_execution_run_id or handle._handle.result_run_id
    while run_id:
        history = await client.temporal.get_workflow_handle(handle.id, run_id=run_id
                                                           ).fetch_history()
        runs.append(history)
        last = history.events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes
                  .new_execution_run_id or None)
    return runs


async def test_histories_of_moving_tasks_replay(client: TaskomaticClient, lab: Lab,
                                                db: Database) -> None:
    a, b = lab.host(1), lab.host(2)
    names = [lab.vm_name(f"r{i}") for i in range(4)]
    with only_hosts_up(db, [a.name, b.name]):
        for name in names:
            await (await client.create_vm(CreateVmRequest(name=name, host=a.name,
                                                          start=name != names[1]))).result()
        # Task ids are the file names: test_replay.py replays a file under its name as the id,
        # and child task ids derive from it.
        tasks: dict[str, TaskHandle] = {}
        tasks["MigrateVm"] = await client.migrate_vm(
            MigrateVmRequest(name=names[0], to=b.name), task_id=f"MigrateVm-{lab.prefix}")
        await tasks["MigrateVm"].result()
        force_host_state(db, a.name, HostState.MAINTENANCE)
        tasks["StartVm-moved"] = await client.start_vm(StartVmRequest(name=names[1]),
                                                       task_id=f"StartVm-moved-{lab.prefix}")
        assert (await tasks["StartVm-moved"].result()).host == b.name
        force_host_state(db, a.name, HostState.UP)
        tasks["ClearHost"] = await client.clear_host(ClearHostRequest(host=a.name, batch=1),
                                                     task_id=f"ClearHost-{lab.prefix}")
        await client.host_result(tasks["ClearHost"])
        tasks["ActivateHost"] = await client.activate_host(ActivateHostRequest(host=a.name),
                                                           task_id=f"ActivateHost-{lab.prefix}")
        await client.host_result(tasks["ActivateHost"])
        tasks["RestoreHost"] = await client.restore_host(RestoreHostRequest(host=a.name),
                                                         task_id=f"RestoreHost-{lab.prefix}")
        restored = await client.host_result(tasks["RestoreHost"])
        assert len(restored.outcomes) == 3

    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    for label, task in tasks.items():
        runs = await _runs(client, task)
        assert runs, label
        if label == "ClearHost":
            assert len(runs) == 2, "one VM per run: the second run ends it"
        for i, history in enumerate(runs):
            result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
            assert result.replay_failure is None, f"{label} run {i}: {result.replay_failure}"
        if os.environ.get("TASKOMATIC_RECORD_HISTORIES"):  # the first run: it continued as new
            (HISTORIES / f"{task.id}.json").write_text(runs[0].to_json())
