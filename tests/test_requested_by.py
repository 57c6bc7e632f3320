"""Who did what: every task records who asked, in its memo and a search attribute."""

from __future__ import annotations

import asyncio

from rich.console import Console

from conftest import Lab
from starter.cli import render
from starter.client import TaskomaticClient, caller_identity
from taskomatic.models import CreateVmRequest, DestroyVmRequest
from taskomatic.temporal import TASK_REQUESTED_BY


async def _listed(client: TaskomaticClient, who: str) -> list[str]:
    query = f"{TASK_REQUESTED_BY.name} = '{who}' AND TaskQueue = '{client.settings.task_queue}'"
    for _ in range(100):  # visibility trails the start a little
        found = [wf.id async for wf in client.temporal.list_workflows(query)]
        if found:
            return found
        await asyncio.sleep(0.1)
    return []


async def test_the_caller_is_recorded_unless_the_request_names_someone(
        client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("who")
    mine = await client.create_vm(CreateVmRequest(name=name, host=host.name))
    await mine.result()
    status = await mine.describe()
    assert status.requested_by == caller_identity() == client.requested_by
    memo = await client.temporal.get_workflow_handle(mine.id).describe()
    assert await memo.memo_value("requested_by") == caller_identity()

    who = f"alice-{lab.prefix}@example.org"
    theirs = await client.destroy_vm(DestroyVmRequest(name=name, requested_by=who))
    await theirs.result()
    assert (await theirs.describe()).requested_by == who
    assert await _listed(client, who) == [theirs.id]
    listed = {t.id: t.requested_by for t in await client.tasks(vm=name)}
    assert listed == {mine.id: caller_identity(), theirs.id: who}

    console = Console(record=True, width=200)
    console.print(render.task_view(await theirs.describe()))
    assert f"requested by: {who}" in console.export_text()


async def test_a_client_can_speak_for_its_users(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    portal = TaskomaticClient(client.temporal, client.settings, client.db,
                              requested_by=f"web-portal-{lab.prefix}")
    task = await portal.create_vm(CreateVmRequest(name=lab.vm_name("p"), host=host.name))
    await task.result()
    assert (await task.describe()).requested_by == f"web-portal-{lab.prefix}"
