"""The scripted demo of ``taskomatic dev --demo``, driven through the starter library only.

Creates and starts four VMs at once (placement picks the hosts), stops one, destroys another,
then shows hosts (usage), VMs and the tasks as tables. Every task is shown live, one line each.
Then moves: migrates a VM to another host, clears a host (maintenance, its VMs moved away, with
live progress), returns it to service and brings its VMs back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from collections.abc import Awaitable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from starter import TaskError, TaskHandle, TaskomaticClient, TaskStatus
from starter.cli import render
from taskomatic.logs import get_logger
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreateVmRequest,
    DestroyVmRequest,
    MigrateVmRequest,
    RestoreHostRequest,
    StopVmRequest,
    TaskProgress,
    VmTaskResult,
)

log = get_logger(component="demo")

REFRESH_SECONDS = 0.2
REQUESTED_BY = "taskomatic dev --demo"
# (vCPUs, memory MiB) of the demo VMs.
SIZES = ((2, 2048), (4, 8192), (1, 1024), (2, 4096))


async def demo_exit_status(client: TaskomaticClient, console: Console) -> int:
    """Run the demo, reporting a failure on ``console``; returns the exit status (0 or 1)."""
    try:
        await run_demo(client, console)
    except TaskError as err:
        console.print(render.failure_text(err.failure))
        return 1
    except Exception as err:
        log.error("demo failed", error=str(err), exc_info=True)
        console.print(f"[bold red]demo failed:[/] {escape(str(err))}")
        return 1
    return 0


async def run_demo(client: TaskomaticClient, console: Console) -> None:
    """Run the scenario; raises (``TaskError`` and others) if any step fails."""
    suffix = secrets.token_hex(2)
    names = [f"demo-{suffix}-{i}" for i in range(1, len(SIZES) + 1)]

    console.rule(f"Creating and starting {len(names)} VMs; placement picks the hosts")
    created = await _track(console, {
        name: client.create_vm(CreateVmRequest(name=name, vcpus=vcpus, memory_mib=memory,
                                               start=True, requested_by=REQUESTED_BY))
        for name, (vcpus, memory) in zip(names, SIZES, strict=True)
    })
    for res in created:
        console.print(f"  {res.vm} is {res.state} on {res.host}")

    console.rule(f"Stopping {names[0]} and destroying {names[1]}")
    await _track(console, {
        names[0]: client.stop_vm(StopVmRequest(name=names[0], requested_by=REQUESTED_BY)),
        names[1]: client.destroy_vm(DestroyVmRequest(name=names[1], requested_by=REQUESTED_BY)),
    })

    console.rule("Where things stand")
    console.print(render.hosts_table(await client.hosts()))
    console.print(render.vms_table([vm for vm in await client.vms() if vm.name in names]))
    console.print(render.tasks_table(await _settled_tasks(client, names, expected=6)))
    await _through_the_api(client, console, names)
    await _moves(client, console, names[2])


async def _through_the_api(client: TaskomaticClient, console: Console, names: list[str]) -> None:
    """Two calls to the dev stack's HTTP API, as the dev admin (its token file)."""
    base = f"http://{client.settings.api_address}"
    token = (client.settings.state_dir / "api-token").read_text(encoding="utf-8").strip()

    def get(path: str) -> Any:
        ask = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(ask, timeout=10) as answer:
            return json.load(answer)

    console.rule(f"The same through the HTTP API ({base})")
    me = await asyncio.to_thread(get, "/me")
    vms = await asyncio.to_thread(get, "/vms")
    ours = sorted(f"{vm['name']} {vm['state']} on {vm['host']}" for vm in vms
                  if vm["name"] in names)
    console.print(f"  GET /me: {me['subject']} ({me['via']}); GET /vms: {'; '.join(ours)}")


async def _moves(client: TaskomaticClient, console: Console, vm: str) -> None:
    """Migrate ``vm``, then clear the host it landed on and bring that host's VMs back."""
    console.rule(f"Migrating {vm}; placement picks the destination")
    moved = (await _track(console, {vm: client.migrate_vm(MigrateVmRequest(
        name=vm, requested_by=REQUESTED_BY))}))[0]
    console.print(f"  {moved.vm} is {moved.state} on {moved.host} ({'; '.join(moved.notes)})")
    if moved.host is None:
        return
    host = moved.host
    console.rule(f"Clearing {host}: maintenance, then every VM moves away")
    plan = await client.host_result(await client.clear_host(ClearHostRequest(
        host=host, dry_run=True, requested_by=REQUESTED_BY)))
    console.print(render.report_table(plan))
    clearing = await client.clear_host(ClearHostRequest(host=host, requested_by=REQUESTED_BY))
    cleared = await render.follow_host_task(client, clearing, console)
    console.print(render.report_table(cleared))
    console.rule(f"Returning {host} to service and restoring its VMs")
    await client.host_result(await client.activate_host(ActivateHostRequest(
        host=host, requested_by=REQUESTED_BY)))
    restoring = await client.restore_host(RestoreHostRequest(host=host,
                                                             requested_by=REQUESTED_BY))
    restored = await render.follow_host_task(client, restoring, console)
    console.print(render.report_table(restored))
    console.print(render.hosts_table(await client.hosts()))


async def _track(console: Console, submissions: dict[str, Awaitable[TaskHandle]]
                 ) -> list[VmTaskResult]:
    """Submit tasks (VM name: submission) at once and show one live line per task; raises the
    first failure once all have ended."""
    handles = await asyncio.gather(*submissions.values())
    columns = (SpinnerColumn(finished_text=" "), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, refresh_per_second=10) as progress:
        outcomes = await asyncio.gather(
            *(_follow(handle, vm, progress) for vm, handle in zip(submissions, handles,
                                                                  strict=True)),
            return_exceptions=True)
    failures = [out for out in outcomes if isinstance(out, BaseException)]
    if failures:
        raise failures[0]
    return [out for out in outcomes if isinstance(out, VmTaskResult)]


async def _follow(handle: TaskHandle, vm: str, progress: Progress) -> VmTaskResult:
    """Update ``handle``'s line from its progress query until it ends."""
    label = f"[bold]{handle.kind:<9}[/] {vm}"
    line: TaskID = progress.add_task(f"{label}  queued", total=None)

    def show(state: TaskProgress | None) -> None:
        if state is not None:
            done = sum(1 for step in state.steps if step.finished_at is not None)
            progress.update(line, description=f"{label}  {state.phase}: "
                            f"{state.current_step or '-'} ({done} done)")

    try:
        res: VmTaskResult = await handle.watch(show, REFRESH_SECONDS)
    except TaskError as err:
        progress.update(line, total=1, completed=1, description=f"{label}  [red]failed at "
                        f"'{err.failure.step}': {escape(err.failure.message)}[/]")
        raise
    where = f" on {res.host}" if res.host else ""
    progress.update(line, total=1, completed=1,
                    description=f"{label}  [green]done[/]: {res.state or 'gone'}{where}")
    assert isinstance(res, VmTaskResult)
    return res


async def _settled_tasks(client: TaskomaticClient, names: list[str], expected: int,
                         wait_seconds: float = 3.0) -> list[TaskStatus]:
    """The demo's tasks from Temporal's visibility store, which lags a little behind."""
    tasks: list[TaskStatus] = []
    for _ in range(int(wait_seconds / REFRESH_SECONDS)):
        tasks = [t for t in await client.tasks(limit=100) if t.vm in names]
        if len(tasks) >= expected and all(t.state != "running" for t in tasks):
            break
        await asyncio.sleep(REFRESH_SECONDS)
    return tasks
