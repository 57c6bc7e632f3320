"""``taskomatic tasks …`` (the task queue) and ``taskomatic batch FILE`` (several tasks at once).

    taskomatic tasks list|watch [--kind K] [--vm V] [--host H] [--pool P] [--state S]
    taskomatic tasks show|cancel|log ID
    taskomatic batch FILE|-

A batch file is JSON: a list of tasks, or ``{"tasks": [...]}``, each ``{"key", "kind",
"request", "after"}`` (see ``starter.batch.BatchItem``), at most ``MAX_BATCH_TASKS`` of them.
With ``--wait`` the exit status is 1 if any task of the batch failed. A task id that is malformed
or unknown (``show``, ``cancel``, ``--after``) is refused naming ``id`` (``after``): exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from starter import RequestError, TaskError
from starter.batch import MAX_BATCH_TASKS, BatchItem
from starter.cli import common, render
from starter.cli.common import console, errors, noun, verb, who
from starter.errors import request_error
from taskomatic.models import TASK_STATES
from workflows.kinds import KINDS


async def tasks_list(args: argparse.Namespace) -> int:
    filters = _filters(args)
    tasks = await (await common.connect()).tasks(**filters)
    render.print_json(tasks) if args.json else console.print(render.tasks_table(tasks))
    return 0


async def tasks_show(args: argparse.Namespace) -> int:
    task_id = common.checked_task_id("id", args.id)
    status = await (await common.connect()).task(task_id).describe()
    render.print_json(status) if args.json else console.print(render.task_view(status))
    return 0


async def tasks_log(args: argparse.Namespace) -> int:
    task_id = common.checked_task_id("id", args.id)
    events = await (await common.connect()).task_log(task_id)
    if not events:
        raise RequestError("id", f"no task {task_id!r} in the audit log")
    render.print_json(events) if args.json else console.print(render.task_log_table(events))
    return 0


async def tasks_watch(args: argparse.Namespace) -> int:
    filters = _filters(args)
    if not 0 < args.every < 3600:  # also refuses nan
        raise RequestError("every", f"must be more than 0 and less than 3600 seconds (got "
                                    f"{args.every})")
    if args.times is not None:
        _at_least_one("times", args.times)
    client = await common.connect()

    async def snapshot() -> Any:
        tasks = await client.tasks(**filters)
        return render.queue_view(tasks)

    await render.live(snapshot, console, every_seconds=args.every, times=args.times)
    return 0


async def tasks_cancel(args: argparse.Namespace) -> int:
    task_id = common.checked_task_id("id", args.id)
    client = await common.connect()
    await client.cancel(task_id)
    if args.json:
        render.print_json({"id": args.id, "cancel_requested": True})
    else:
        console.print(f"cancellation requested for [bold]{args.id}[/]: it undoes what it did "
                      "and releases what it held")
    return 0


async def batch(args: argparse.Namespace) -> int:
    after = [common.checked_task_id("after", task_id) for task_id in args.after]
    items = _batch_items(_read(args.file))
    for item in items:  # --after: the whole batch waits; --requested-by: every task's author
        item.after = [*item.after, *after]
        item.request.setdefault("requested_by", who(args))
    client = await common.connect()
    try:
        submitted = await client.submit_batch(items)
    except RequestError as err:  # the library names items[i]; the file has tasks[i]
        if err.field and err.field.startswith("items"):
            raise RequestError("tasks" + err.field.removeprefix("items"), err.reason) from None
        raise
    rows: list[dict[str, Any]] = [{"key": key, "id": handle.id, "kind": handle.kind}
                                  for key, handle in submitted]
    if not args.wait:
        if args.json:
            render.print_json({"tasks": rows})
        else:
            for row in rows:
                console.print(f"submitted {row['kind']} [bold]{row['id']}[/] ({row['key']})")
        return 0
    outcomes = await asyncio.gather(*(h.result() for _, h in submitted), return_exceptions=True)
    failed = 0
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, TaskError):
            failed += 1
            row["error"] = outcome.failure.model_dump(mode="json")
            if not args.json:
                errors.print(render.failure_text(outcome.failure))
        elif isinstance(outcome, BaseException):
            raise outcome
        elif not args.json:
            console.print(f"[green]✔[/] {row['kind']} {row['id']} ({row['key']})")
    if args.json:
        render.print_json({"tasks": rows})
    return 1 if failed else 0


def _read(path: str) -> str:
    """The text of the file ``path`` (``-``: standard input); ``RequestError`` naming ``file``
    if it cannot be read or is not UTF-8."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RequestError("file", f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise RequestError("file", f"{path} is not UTF-8 text ({err.reason} at byte "
                                   f"{err.start})") from None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters of ``tasks list|watch``: well-formed names (a VM that is gone still has its
    tasks, so a name need not exist) and a known kind; ``RequestError`` naming the option."""
    if args.kind is not None and args.kind not in KINDS:
        raise RequestError("kind", f"unknown task kind {args.kind!r} (known: "
                                   f"{', '.join(sorted(KINDS))})")
    return {"kind": args.kind, "vm": common.checked_name("vm", args.vm),
            "host": common.checked_name("host", args.host),
            "pool": common.checked_name("pool", args.pool), "state": args.state,
            "limit": _at_least_one("limit", args.limit)}


def _at_least_one(field: str, value: int) -> int:
    if value < 1:
        raise RequestError(field, f"must be at least 1 (got {value})")
    return value


def _batch_items(text: str) -> list[BatchItem]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError("file", f"not JSON: {err}") from None
    entries = data.get("tasks") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise RequestError("tasks", "expected a non-empty list of tasks (or {\"tasks\": [...]})")
    if len(entries) > MAX_BATCH_TASKS:
        raise RequestError("tasks", f"at most {MAX_BATCH_TASKS} tasks per batch (got "
                                    f"{len(entries)}); split it, using --after between the parts")
    items = []
    for i, entry in enumerate(entries):
        try:
            items.append(BatchItem.model_validate(entry))
        except ValidationError as err:
            failure = request_error(err)
            raise RequestError(f"tasks[{i}].{failure.field}", failure.reason) from None
    return items


def _task_filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--kind", choices=sorted(KINDS), metavar="KIND",
                    help=f"one of {', '.join(sorted(KINDS))}")
    for flag in ("--vm", "--host", "--pool"):
        sp.add_argument(flag)
    sp.add_argument("--state", choices=TASK_STATES)
    sp.add_argument("--limit", type=int, default=200, help="at most this many tasks")


def add_commands(nouns: Any) -> None:
    """Add the ``tasks`` noun and its verbs, and the ``batch`` verb."""
    tasks = noun(nouns, "tasks", "the task queue")
    sp = verb(tasks, "list", tasks_list, "tasks, newest first", read=True)
    _task_filters(sp)
    verb(tasks, "show", tasks_show, "one task: state, what it waits on, steps, result or error",
         read=True).add_argument("id")
    verb(tasks, "log", tasks_log, "the task's story from the audit log: submitted, steps, undos, "
         "waits, end (kept after Temporal's history is gone)", read=True).add_argument("id")
    sp = verb(tasks, "watch", tasks_watch, "a live table of the queue (Ctrl-C to leave)")
    _task_filters(sp)
    sp.add_argument("--every", type=float, default=1.0, help="refresh interval in seconds")
    sp.add_argument("--times", type=int, help="refresh this many times, then exit")
    verb(tasks, "cancel", tasks_cancel, "cancel a task: it undoes its steps and releases its "
         "resources", read=True).add_argument("id")

    sp = verb(nouns, "batch", batch, "submit several tasks with dependencies among them "
              "(JSON file, or - for stdin)", write=True)
    sp.add_argument("file")
