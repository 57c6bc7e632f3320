"""The starter library's reads and the blocking facade a non-async web app uses."""

from __future__ import annotations

import asyncio

import pytest

from conftest import Lab
from starter.client import RequestError, TaskError, TaskomaticClient
from starter.sync import SyncTaskomaticClient
from taskomatic.models import CreateVmRequest, DestroyVmRequest


async def test_sync_facade_runs_tasks_from_plain_threads(client: TaskomaticClient,
                                                         lab: Lab) -> None:
    host = lab.host()
    names = [lab.vm_name(f"s{i}") for i in range(3)]
    sync = SyncTaskomaticClient.wrapping(client)

    def web_request(name: str) -> str:  # what a Flask view would do
        task = sync.create_vm(CreateVmRequest(name=name, host=host.name, start=True))
        return str(task.result(timeout=60).state)

    try:
        states = await asyncio.gather(*(asyncio.to_thread(web_request, n) for n in names))
        assert states == ["running"] * 3
        assert sorted(vm.name for vm in await asyncio.to_thread(sync.vms, host.name)) == names
        with pytest.raises(RequestError) as refused:
            await asyncio.to_thread(sync.create_vm, CreateVmRequest(name=names[0]))
        assert refused.value.field == "name"
    finally:
        await asyncio.to_thread(sync.close)


async def test_tasks_are_listed_and_described(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host(vcpus=1)
    name = lab.vm_name("listed")
    ok = await client.create_vm(CreateVmRequest(name=name, host=host.name))
    await ok.result()
    too_big = await client.create_vm(CreateVmRequest(name=lab.vm_name("big"), vcpus=2,
                                                     host=host.name))
    with pytest.raises(TaskError):
        await too_big.result()
    await (await client.destroy_vm(DestroyVmRequest(name=name))).result()

    listed = []
    for _ in range(50):  # visibility is eventually consistent
        listed = await client.tasks(host=host.name)
        if len(listed) == 3 and all(t.state != "running" for t in listed):
            break
        await asyncio.sleep(0.1)
    assert sorted((t.kind, t.state) for t in listed) == [
        ("CreateVm", "complete"), ("CreateVm", "error"), ("DestroyVm", "complete")]

    failed = await too_big.describe()
    assert failed.state == "error" and failed.error is not None
    assert (failed.error.step, failed.error.error_type) == ("reserve capacity", "NoCapacity")
    assert failed.progress is not None and failed.progress.phase == "failed"
    done = await ok.describe()
    assert done.result is not None and done.result.uuid
    assert [s.name for s in done.progress.steps] == [f"wait for vm:{name}", "reserve capacity",
                                                    "define domain", "record VM"]
