"""The starter library's reads and the blocking facade a non-async web app uses."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import typing

import pytest
from temporalio import workflow

import workflows
from conftest import Lab
from starter.batch import BatchItem
from starter.client import RequestError, TaskError, TaskomaticClient
from starter.sync import SyncTaskHandle, SyncTaskomaticClient
from taskomatic.models import (
    ClearHostRequest,
    CreateVmRequest,
    DestroyVmRequest,
    HostState,
    HostTaskResult,
    TaskRequest,
)
from worker import TASK_WORKFLOWS
from workflows.kinds import KINDS, kind_of


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


def test_the_registry_has_every_workflow_the_worker_runs_once() -> None:
    """Every ``@workflow.defn`` class under workflows/ is one row of the registry, under the
    name Temporal knows it by; the worker runs exactly those; names, task-id slugs, client
    methods and request types are each unique, and each method exists on the client."""
    defined = set()
    for info in pkgutil.iter_modules(workflows.__path__, "workflows."):
        for _, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
            defn = workflow._Definition.from_class(cls)  # the SDK's own record of the class
            if defn is not None and cls.__module__ == info.name:
                defined.add(cls)
                assert defn.name == cls.__name__, f"{cls.__name__} runs as {defn.name}"
    rows = list(KINDS.values())
    assert {k.workflow for k in rows} == defined == set(TASK_WORKFLOWS)
    assert len(TASK_WORKFLOWS) == len(rows)
    for key in ("name", "slug", "method", "request"):
        values = [getattr(k, key) for k in rows if getattr(k, key) is not None]
        assert len(values) == len(set(values)), f"a {key} is shared: {values}"
    for kind in rows:
        assert kind_of(kind.request) is kind
        if kind.method is not None:
            method = getattr(TaskomaticClient, kind.method)
            assert inspect.iscoroutinefunction(method)
            assert typing.get_type_hints(method)["req"] is kind.request, kind.method
    # And no typed task method of the client (``start``/``submit`` take any kind) is missing
    # from the registry.
    typed = {name for name, fn in inspect.getmembers(TaskomaticClient, inspect.iscoroutinefunction)
             if not name.startswith("_")
             and isinstance(typing.get_type_hints(fn).get("req"), type)
             and issubclass(typing.get_type_hints(fn)["req"], TaskRequest)}
    assert typed - {"start", "submit"} == {k.method for k in rows if k.method is not None}
    assert (KINDS["ClearHost"].slug, KINDS["ClearHost"].method) == ("host-clear", "clear_host")


def test_the_sync_facade_has_every_coroutine_method_of_the_client() -> None:
    public = {name for name, _ in inspect.getmembers(TaskomaticClient, inspect.iscoroutinefunction)
              if not name.startswith("_")}
    assert {"migrate_vm", "clear_host", "activate_host", "restore_host", "submit_batch",
            "create_pool", "start", "host_result"} <= public
    missing = {name for name in public if not callable(getattr(SyncTaskomaticClient, name, None))}
    assert missing == set()
    waited = {name for name, _ in inspect.getmembers(SyncTaskomaticClient,
                                                     inspect.iscoroutinefunction)}
    assert waited == set()


async def test_the_sync_facade_runs_a_clear_host_dry_run(client: TaskomaticClient,
                                                         lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("dry")
    sync = SyncTaskomaticClient.wrapping(client)

    def web_request() -> tuple[HostTaskResult, list[tuple[str, SyncTaskHandle]]]:
        sync.create_vm(CreateVmRequest(name=name, host=host.name), task_id=f"{name}-made"
                       ).result(timeout=60)
        task = sync.clear_host(ClearHostRequest(host=host.name, dry_run=True))
        assert isinstance(task, SyncTaskHandle) and task.kind == "ClearHost"
        plan = sync.host_result(task)  # a SyncTaskHandle goes in as its TaskHandle
        gone = sync.submit_batch([BatchItem(key="gone", kind="DestroyVm",
                                            request={"name": name})])
        gone[0][1].result(timeout=60)
        return plan, gone

    try:
        plan, gone = await asyncio.to_thread(web_request)
    finally:
        await asyncio.to_thread(sync.close)
    assert plan.dry_run and plan.state == HostState.UP
    assert [m.vm for m in plan.plan] == [name]
    assert [(key, type(handle)) for key, handle in gone] == [("gone", SyncTaskHandle)]
