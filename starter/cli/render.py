"""Terminal output for the CLI and the dev demo: rich tables, the live display of a task (and of
a host task's moves), JSON for scripts."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from starter import TaskHandle, TaskomaticClient, TaskStatus
from taskomatic.models import (
    ClusterRecord,
    HostRecord,
    HostTaskProgress,
    HostTaskResult,
    StepState,
    TaskFailure,
    TaskProgress,
    VmRecord,
)
from taskomatic.models.events import TaskEvent

_STEP_STYLE = {StepState.RUNNING: "yellow", StepState.DONE: "green", StepState.FAILED: "red",
               StepState.COMPENSATING: "magenta", StepState.COMPENSATED: "magenta"}
_TASK_STYLE = {"new": "cyan", "waiting": "blue", "running": "yellow", "complete": "green",
               "error": "red", "cancelled": "magenta"}
_OUTCOME_STYLE = {"moved": "green", "already moved": "green", "stopped": "yellow",
                  "failed": "red", "not managed": "red"}


def print_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(data, BaseModel):
        payload: Any = data.model_dump(mode="json")
    elif isinstance(data, dict):
        payload = data
    else:
        payload = [item.model_dump(mode="json") for item in data]
    print(json.dumps(payload, indent=2))


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%H:%M:%S") if moment else "-"


def hosts_table(hosts: Sequence[HostRecord]) -> Table:
    table = Table("host", "cluster", "state", "vCPUs used/total", "memory MiB used/total", "VMs",
                  "uri", title="Hosts")
    table.columns[-1].overflow = "fold"
    for h in hosts:
        style = "green" if h.state == "up" else "yellow"
        table.add_row(h.name, h.cluster, Text(h.state, style=style),
                      f"{h.used_vcpus + h.reserved_vcpus}/{h.vcpus}",
                      f"{h.used_memory_mib + h.reserved_memory_mib}/{h.memory_mib}",
                      str(h.vm_count), h.uri)
    return table


def clusters_table(clusters: Sequence[ClusterRecord]) -> Table:
    table = Table("cluster", "hypervisor", "CPU model", "overcommit vCPU/memory", "weigher",
                  "vCPUs used/total", "memory MiB used/total", "hosts", title="Clusters")
    table.columns[-1].overflow = "fold"
    for c in clusters:
        table.add_row(c.name, c.hypervisor_type, c.cpu_model or "-",
                      f"{c.vcpu_overcommit:g}/{c.memory_overcommit:g}", c.weigher,
                      f"{c.used_vcpus}/{c.vcpus}", f"{c.used_memory_mib}/{c.memory_mib}",
                      ", ".join(c.hosts) or "-")
    return table


def vms_table(vms: Sequence[VmRecord]) -> Table:
    table = Table("VM", "host", "state", "vCPUs", "memory MiB", "uuid", title="VMs")
    for vm in vms:
        style = "green" if vm.state == "running" else "dim"
        table.add_row(vm.name, vm.host, Text(vm.state, style=style), str(vm.vcpus),
                      str(vm.memory_mib), vm.uuid)
    return table


def tasks_table(tasks: Sequence[TaskStatus], title: str = "Tasks") -> Table:
    table = Table("task", "kind", "state", "resources", "waiting on / error", "submitted",
                  "finished", title=title)
    for column in (table.columns[0], table.columns[3], table.columns[4]):
        column.overflow = "fold"
    for t in tasks:
        why = "; ".join(t.waiting_on) if t.waiting_on else (t.error.message if t.error else "")
        table.add_row(t.id, t.kind, Text(t.state, style=_TASK_STYLE.get(t.state, "")),
                      ", ".join(t.resources) or "-", why, _when(t.submitted_at),
                      _when(t.finished_at))
    return table


def queue_view(tasks: Sequence[TaskStatus]) -> Group:
    """The queue at a glance: counts per state, then the tasks not yet finished, then the
    latest finished ones."""
    counts = Counter(t.state for t in tasks)
    summary = Text()
    for state in ("new", "waiting", "running", "complete", "error", "cancelled"):
        summary.append(f"{state} {counts.get(state, 0)}  ", style=_TASK_STYLE.get(state, ""))
    open_ = [t for t in tasks if t.state in ("new", "waiting", "running")]
    done = [t for t in tasks if t.state not in ("new", "waiting", "running")][:10]
    return Group(summary, tasks_table(open_, "In the queue"), tasks_table(done, "Latest ended"))


async def live(snapshot: Callable[[], Awaitable[Any]], console: Console, every_seconds: float,
               times: int | None = None) -> None:
    """Redraw ``await snapshot()`` every ``every_seconds`` (``times`` times, or until Ctrl-C)."""
    with Live(await snapshot(), console=console, refresh_per_second=4) as screen:
        shown = 1
        while times is None or shown < times:
            await asyncio.sleep(every_seconds)
            screen.update(await snapshot())
            shown += 1


def steps_table(progress: TaskProgress) -> Table:
    table = Table("step", "state", "started", "took", "detail", box=None, show_header=True)
    for step in progress.steps:
        took = (f"{(step.finished_at - step.started_at).total_seconds():.2f}s"
                if step.finished_at else "…")
        table.add_row(step.name, Text(step.state, style=_STEP_STYLE.get(step.state, "")),
                      _when(step.started_at), took, step.detail or "")
    return table


def failure_text(failure: TaskFailure) -> Text:
    text = Text()
    text.append(f"task {failure.task_id} failed", style="bold red")
    text.append(f" at step '{failure.step}': ")
    text.append(failure.message, style="red")
    text.append(f"\n  error type: {failure.error_type}"
                f" ({'retryable' if failure.retryable else 'not retryable'})")
    for label, value in (("field", failure.field), ("VM", failure.vm), ("host", failure.host),
                         ("libvirt code", failure.libvirt_code)):
        if value is not None:
            text.append(f"\n  {label}: {value}")
    if failure.compensated:
        text.append(f"\n  undone: {', '.join(failure.compensated)}", style="magenta")
    if failure.compensation_failed:
        text.append(f"\n  NOT undone (check by hand): {', '.join(failure.compensation_failed)}",
                    style="bold red")
    return text


def result_text(kind: str, result: Any) -> Text:
    """One line (or a few) saying what a finished task did."""
    if hasattr(result, "headline"):
        return Text.from_markup("[green]✔[/] ") + Text(result.headline())
    text = Text.from_markup(f"[green]✔[/] {kind}: {getattr(result, 'detail', 'done')}")
    for finding in getattr(result, "findings", []):
        mark = "repaired" if finding.repaired else "NEEDS AN OPERATOR"
        text.append(f"\n  {finding.kind} {finding.subject}: {finding.detail} [{mark}]",
                    style="yellow" if finding.repaired else "bold red")
    return text


def task_log_table(events: Sequence[TaskEvent]) -> Table:
    """A task's audit log: one row per event, oldest first."""
    table = Table("#", "at", "event", "step", "try", "ms", "detail", title="Task log")
    table.columns[-1].overflow = "fold"
    for e in events:
        table.add_row(str(e.id), _when(e.at), e.kind, e.step or "",
                      str(e.attempt or ""), "" if e.duration_ms is None else str(e.duration_ms),
                      event_summary(e))
    return table


def event_summary(event: TaskEvent) -> str:
    """The one-line gist of an event's detail: who/what for a submission, what it waits on,
    the step's detail or error, the end's state and error."""
    d = event.detail
    if event.kind == "submitted":
        return f"by {d.get('requested_by')} for {', '.join(d.get('resources') or []) or '-'}"
    if event.kind == "waiting":
        return "; ".join(d.get("on") or [])
    if event.kind == "end":
        error = d.get("error") or {}
        return str(d.get("state", "")) + (f": {error.get('message')}" if error else "")
    return str(d.get("error") or d.get("detail") or "")


def task_view(status: TaskStatus) -> Group:
    head = Text()
    head.append(f"{status.kind} ", style="bold")
    head.append(status.id)
    head.append(f"  [{status.state}]", style=_TASK_STYLE.get(status.state, ""))
    parts: list[Any] = [head]
    if status.vm or status.host:
        parts.append(Text(f"VM {status.vm or '-'} on host {status.host or '-'}"))
    facts = [("resources", ", ".join(status.resources)), ("after", ", ".join(status.after)),
             ("waiting on", "; ".join(status.waiting_on)),
             ("requested by", status.requested_by or ""),
             ("submitted", _when(status.submitted_at)), ("started", _when(status.started_at)),
             ("finished", _when(status.finished_at))]
    parts += [Text(f"{label}: {value}") for label, value in facts if value and value != "-"]
    if status.progress is not None:
        parts.append(steps_table(status.progress))
    if status.error is not None:
        parts.append(failure_text(status.error))
    return Group(*parts)


async def follow(handle: TaskHandle, console: Console) -> Any:
    """Show a task's steps live until it ends, then leave the final steps on screen; returns its
    result or raises ``TaskError``."""
    seen: TaskProgress | None = None
    try:
        with Live(console=console, refresh_per_second=10, transient=True) as live:

            def show(progress: TaskProgress | None) -> None:
                nonlocal seen
                seen = progress
                step = progress.current_step if progress else "queued"
                if progress is not None and progress.percent is not None:
                    step = f"{step} ({progress.percent:.0f}%)"
                spinner = Spinner("dots", text=Text(f"{handle.kind} {handle.id}: {step}"))
                live.update(Group(spinner, steps_table(progress)) if progress else spinner)

            return await handle.watch(show)
    finally:
        if seen is not None:
            console.print(steps_table(seen))


# --- host tasks (clear, activate, restore): their moves ------------------------------------


def moves_text(kind: str, task_id: str, moves: HostTaskProgress | None) -> Group:
    """One host task's moves: moved / in flight / remaining / failed, the ETA, the VMs moving."""
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
    """A host task's plan (dry run: each VM's destination) or its per-VM outcomes."""
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
                           console: Console) -> HostTaskResult:
    """Show a host task's moves live until it ends; returns its result or raises TaskError."""
    waiter = asyncio.ensure_future(client.host_result(handle))
    with Live(console=console, refresh_per_second=10, transient=True) as live:
        while not waiter.done():
            live.update(moves_text(handle.kind, handle.id, await client.host_moves(handle.id)))
            await asyncio.wait([waiter], timeout=0.2)
    return waiter.result()
