"""CLI verbs of moving VMs and host maintenance.

    taskomatic vm migrate NAME [--to HOST]
    taskomatic host clear NAME [--dry-run] [--stop-unmigratable]
    taskomatic host activate NAME
    taskomatic host restore NAME

With ``--wait`` a clear or restore shows moved / in flight / remaining / failed and the time
left, live, then the per-VM report; ``--dry-run`` always prints the plan and changes nothing.
Exit status as for every write verb, and 1 when a VM could not move (a clear then ends in
``maintenance_failed``).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from starter.cli import render
from starter.cli.main import _client, _submit, _who, console, report_failure, report_submitted, verb
from starter.client import TaskError, TaskHandle, TaskomaticClient, validated
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    HostTaskProgress,
    HostTaskResult,
    MigrateVmRequest,
    RestoreHostRequest,
)

_OUTCOME_STYLE = {"moved": "green", "already moved": "green", "stopped": "yellow",
                  "failed": "red", "not managed": "red"}


def moves_text(kind: str, task_id: str, moves: HostTaskProgress | None) -> Group:
    head = Spinner("dots", text=Text(f"{kind} {task_id}"))
    if moves is None:
        return Group(head, Text("  queued"))
    eta = f"{moves.eta_seconds:.0f}s" if moves.eta_seconds is not None else "…"
    line = Text("  ")
    for label, value, style in (("moved", moves.moved, "green"),
                                ("in flight", moves.in_flight, "yellow"),
                                ("remaining", moves.remaining, ""),
                                ("failed", moves.failed, "red")):
        line.append(f"{label} {value}", style=style)
        line.append("  ")
    line.append(f"ETA {eta}")
    if moves.in_flight_vms:
        line.append(f"\n  moving: {', '.join(moves.in_flight_vms)}", style="dim")
    return Group(head, line)


def report_table(result: HostTaskResult) -> Table:
    if result.dry_run:
        table = Table("VM", "destination", "note", title=f"Plan to clear {result.host} "
                      "(dry run: nothing changed)")
        for move in result.plan:
            table.add_row(move.vm, move.destination or Text("none", style="red"),
                          move.reason or "")
        return table
    table = Table("VM", "outcome", "now on", "reason",
                  title=f"{result.kind} {result.host}: {result.state or '-'}")
    for o in result.outcomes:
        table.add_row(o.vm, Text(o.outcome, style=_OUTCOME_STYLE.get(o.outcome, "")),
                      o.destination or "-", o.reason or "")
    return table


async def follow_host_task(client: TaskomaticClient, handle: TaskHandle,
                           out: Console = console) -> HostTaskResult:
    """Show a host task's moves live until it ends; returns its result or raises TaskError."""
    waiter = asyncio.ensure_future(client.host_result(handle))
    with Live(console=out, refresh_per_second=10, transient=True) as live:
        while not waiter.done():
            live.update(moves_text(handle.kind, handle.id, await client.host_moves(handle.id)))
            await asyncio.wait([waiter], timeout=0.2)
    return waiter.result()


async def _host_task(args: argparse.Namespace, start: Any, always_wait: bool = False) -> int:
    client = await _client()
    handle: TaskHandle = await start(client)
    if not (args.wait or always_wait):
        return report_submitted(args, handle)
    try:
        result = (await client.host_result(handle) if args.json
                  else await follow_host_task(client, handle))
    except TaskError as err:
        return report_failure(args, handle, err)
    if args.json:
        render.print_json(result)
    else:
        console.print(report_table(result))
        moved = sum(1 for o in result.outcomes if o.outcome in ("moved", "already moved"))
        console.print(f"{result.kind} {result.host}: [bold]{result.state or '-'}[/] "
                      f"({moved} moved, {len(result.failed)} could not move, {result.runs} runs)")
    return 1 if result.failed else 0


async def vm_migrate(args: argparse.Namespace) -> int:
    req = validated(MigrateVmRequest, name=args.name, to=args.to, requested_by=_who(args),
                    after=args.after)
    return await _submit(args, lambda c: c.migrate_vm(req))


async def host_clear(args: argparse.Namespace) -> int:
    req = validated(ClearHostRequest, host=args.name, dry_run=args.dry_run,
                    stop_unmigratable=args.stop_unmigratable, requested_by=_who(args),
                    after=args.after)
    return await _host_task(args, lambda c: c.clear_host(req), always_wait=args.dry_run)


async def host_activate(args: argparse.Namespace) -> int:
    req = validated(ActivateHostRequest, host=args.name, requested_by=_who(args),
                    after=args.after)
    return await _host_task(args, lambda c: c.activate_host(req))


async def host_restore(args: argparse.Namespace) -> int:
    req = validated(RestoreHostRequest, host=args.name, requested_by=_who(args),
                    after=args.after)
    return await _host_task(args, lambda c: c.restore_host(req))


def add_commands(host: Any, vm: Any) -> None:
    """Add the verbs to the ``host`` and ``vm`` families."""
    sp = verb(vm, "migrate", vm_migrate, "move a VM to another host (live when it can)",
              write=True)
    sp.add_argument("name")
    sp.add_argument("--to", help="destination host (default: placement picks one)")
    sp = verb(host, "clear", host_clear, "put a host in maintenance and move its VMs away",
              write=True)
    sp.add_argument("name")
    sp.add_argument("--dry-run", action="store_true",
                    help="print each VM's planned destination; change nothing")
    sp.add_argument("--stop-unmigratable", action="store_true",
                    help="stop the VMs that cannot move")
    verb(host, "activate", host_activate, "return a host to service (moved VMs keep their "
         "origin)", write=True).add_argument("name")
    verb(host, "restore", host_restore, "migrate the VMs cleared off a host back to it",
         write=True).add_argument("name")
