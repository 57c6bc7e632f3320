"""What every ``taskomatic`` noun module shares: the consoles, the connection to the stack, the
verb builder, and submitting a task and following it.

Exit statuses (see ``starter.cli.main``): 0 success; 1 a task failed; 2 the request was refused;
3 a service could not be reached. The functions here return them, or raise ``ServiceUnavailable``
(3) and ``RequestError`` (2) for ``starter.cli.main.run`` to report.

Noun modules call ``common.connect()`` through this module (not a copy imported by name), so a
test can replace the connection in one place.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from starter import RequestError, TaskError, TaskHandle, TaskomaticClient
from starter.cli import render
from taskomatic.models import Name, TaskId
from taskomatic.settings import get_settings

console = Console()
errors = Console(stderr=True)

# Makes a task start: called with the connected client, returns the started task's handle.
Submission = Callable[[TaskomaticClient], Awaitable[TaskHandle]]


class ServiceUnavailable(Exception):
    """Temporal (or the stack behind it) does not answer; exit status 3."""


async def connect() -> TaskomaticClient:
    """A client of the stack the settings name; ServiceUnavailable, saying how to start one, if
    Temporal does not answer."""
    settings = get_settings()
    try:
        return await TaskomaticClient.connect(settings)
    except RuntimeError as err:
        raise ServiceUnavailable(
            f"{err}; is `taskomatic dev` "
            "or a worker stack running? (settings: TASKOMATIC_TEMPORAL_ADDRESS or .taskomatic/env)"
        ) from None


_NAME: TypeAdapter[str] = TypeAdapter(Name)
_TASK_ID: TypeAdapter[str] = TypeAdapter(TaskId)


def checked_name(field: str, value: str | None) -> str | None:
    """``value`` (a VM, host or pool name given on the command line) if it is None or well
    formed; ``RequestError`` naming ``field`` otherwise."""
    return _checked(_NAME, field, value)


def checked_task_id(field: str, value: str) -> str:
    """``value`` if it is a well-formed task id; ``RequestError`` naming ``field`` otherwise."""
    checked = _checked(_TASK_ID, field, value)
    assert checked is not None
    return checked


def _checked(adapter: TypeAdapter[str], field: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise RequestError(field, err.errors()[0]["msg"].removeprefix("Value error, ")
                           ) from None


async def existing(client: TaskomaticClient, field: str, kind: str, name: str | None
                   ) -> str | None:
    """``name`` if it is None or names a ``kind`` ("host" or "pool") of the inventory: a list
    filtered by a typo would look like an empty inventory. ``RequestError`` naming ``field``."""
    if checked_name(field, name) is None:
        return None
    known = ({h.name for h in await client.hosts()} if kind == "host"
             else {p.name for p in await client.pools()})
    if name not in known:
        raise RequestError(field, f"no {kind} named {name!r}")
    return name


def who(args: argparse.Namespace) -> str:
    """Who asks: ``--requested-by``, else the OS user."""
    return str(getattr(args, "requested_by", None) or getpass.getuser())


async def submit(args: argparse.Namespace, make: Submission) -> int:
    """Start a task with ``make``; without ``--wait`` say which task started (0), with it follow
    the task live (or wait quietly with ``--json``) and show its result (0) or failure (1)."""
    client = await connect()
    handle = await make(client)
    if not args.wait:
        return report_submitted(args, handle)
    try:
        if args.json:
            result = await handle.result()
        else:
            result = await render.follow(handle, console)
    except TaskError as err:
        return report_failure(args, handle, err)
    if args.json:
        render.print_json(result)
    else:
        console.print(render.result_text(handle.kind, result))
    return 0


def report_submitted(args: argparse.Namespace, handle: TaskHandle) -> int:
    """Say which task was started, for a write verb run without ``--wait``; exit status 0."""
    if args.json:
        render.print_json({"id": handle.id, "kind": handle.kind})
    else:
        console.print(f"submitted {handle.kind} task [bold]{handle.id}[/]")
    return 0


def report_failure(args: argparse.Namespace, handle: TaskHandle, err: TaskError) -> int:
    """Say how a task failed (JSON or human); the exit status of a failed task."""
    if args.json:
        render.print_json({"id": handle.id, "error": err.failure.model_dump(mode="json")})
    else:
        errors.print(render.failure_text(err.failure))
    return 1


def verb(parent: Any, name: str, fn: Callable[..., Any], help: str, *,
         read: bool = False, write: bool = False) -> argparse.ArgumentParser:
    """Add one verb. ``write`` verbs submit a task: --wait, --json, --requested-by, --after."""
    sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(fn=fn)
    if read or write:
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    if write:
        sp.add_argument("--wait", action="store_true",
                        help="follow the task live; exit non-zero if it fails")
        sp.add_argument("--requested-by", help="who asks (default: the OS user)")
        sp.add_argument("--after", action="append", default=[], metavar="TASK_ID",
                        help="run only after this task completed (repeatable)")
    return sp


def show(args: argparse.Namespace, data: Any, text: Any) -> int:
    """Print ``data`` as JSON with ``--json``, else ``text`` (a line or a rich table); 0."""
    render.print_json(data) if args.json else console.print(text)
    return 0


def noun(nouns: Any, name: str, help: str) -> Any:
    """Add a noun whose verbs are required sub-commands; returns its sub-parsers."""
    return nouns.add_parser(name, help=help).add_subparsers(dest="verb", required=True)
