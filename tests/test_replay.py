"""Replay: today's workflow code must reproduce every recorded history exactly.

``tests/histories/`` holds histories recorded from released code. A change that breaks them needs
``workflow.patched``. To record new ones (after adding a workflow or a patch, never to paper over
a break): ``TASKOMATIC_RECORD_HISTORIES=<tag> pytest tests/test_replay.py`` writes
``<label>.<tag>.json`` beside the older ones, which stay (e.g. the tag of the patch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from conftest import Lab
from starter.client import TaskError, TaskHandle, TaskomaticClient
from taskomatic.models import CreateVmRequest, DestroyVmRequest, StartVmRequest, StopVmRequest
from worker import TASK_WORKFLOWS as WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"
KINDS = {"CreateVm", "StartVm", "StopVm", "DestroyVm", "MigrateVm", "ClearHost", "ActivateHost",
         "RestoreHost", "CreateStoragePool", "DestroyStoragePool", "RefreshStoragePool",
         "SetPoolAutostart", "CreateVolume", "DeleteVolume", "ResizeVolume", "Reconcile"}


def _replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)


async def _history(client: TaskomaticClient, handle: TaskHandle) -> WorkflowHistory:
    return await client.temporal.get_workflow_handle(handle.id).fetch_history()


async def test_fresh_histories_of_every_task_replay(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host(vcpus=2)
    name = lab.vm_name("replay")
    runs: dict[str, TaskHandle] = {}
    runs["CreateVm"] = await client.create_vm(CreateVmRequest(name=name, host=host.name,
                                                              start=True))
    await runs["CreateVm"].result()
    runs["StopVm"] = await client.stop_vm(StopVmRequest(name=name, timeout_seconds=5))
    await runs["StopVm"].result()
    runs["StartVm"] = await client.start_vm(StartVmRequest(name=name))
    await runs["StartVm"].result()
    runs["CreateVm-failed"] = await client.create_vm(CreateVmRequest(
        name=lab.vm_name("toobig"), vcpus=4, host=host.name))
    with pytest.raises(TaskError):
        await runs["CreateVm-failed"].result()
    # Tasks that wait: one in line behind another on the same VM, one for a prerequisite.
    runs["StopVm-first"] = await client.stop_vm(StopVmRequest(name=name, force=True))
    runs["StartVm-queued"] = await client.start_vm(StartVmRequest(name=name))
    runs["StopVm-after"] = await client.stop_vm(StopVmRequest(
        name=name, force=True, after=[runs["StartVm-queued"].id]))
    await runs["StopVm-after"].result()
    runs["DestroyVm"] = await client.destroy_vm(DestroyVmRequest(name=name))
    await runs["DestroyVm"].result()

    replayer = _replayer()
    for label, handle in runs.items():
        history = await _history(client, handle)
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{label}: {result.replay_failure}"
        tag = os.environ.get("TASKOMATIC_RECORD_HISTORIES")
        if tag:
            HISTORIES.mkdir(exist_ok=True)
            (HISTORIES / f"{label}.{tag}.json").write_text(history.to_json())


async def test_recorded_histories_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    kinds = {json.loads(f.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]
             ["workflowType"]["name"] for f in files}
    assert kinds >= KINDS, f"recorded histories missing for {KINDS - kinds}"
    replayer = _replayer()
    for f in files:
        history = WorkflowHistory.from_json(f.stem, f.read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{f.name}: {result.replay_failure}"
