"""The ``taskomatic`` command line.

Exit status: 0 success; 1 a task failed; 2 the request was refused (bad input, named field);
3 a service (Temporal, PostgreSQL) could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

import codec_server
from starter.batch import BatchItem
from starter.cli import lab as cli_lab
from starter.cli import render
from starter.client import (
    RequestError,
    TaskError,
    TaskHandle,
    TaskomaticClient,
    request_error,
    validated,
)
from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.logs import configure_logging
from taskomatic.models import (
    TASK_STATES,
    CreateVmRequest,
    DestroyVmRequest,
    HostSpec,
    ReconcileRequest,
    StartVmRequest,
    StopVmRequest,
)
from taskomatic.settings import get_settings

console = Console()
errors = Console(stderr=True)


class ServiceUnavailable(Exception):
    pass


async def _client() -> TaskomaticClient:
    settings = get_settings()
    try:
        return await TaskomaticClient.connect(settings)
    except RuntimeError as err:
        raise ServiceUnavailable(
            f"{err}; is `taskomatic dev` "
            "or a worker stack running? (settings: TASKOMATIC_TEMPORAL_ADDRESS or .taskomatic/env)"
        ) from None


# --- writes: every one returns a task, shown live with --wait --------------------------------


async def _submit(args: argparse.Namespace, make: Callable[[TaskomaticClient],
                                                           Awaitable[TaskHandle]]) -> int:
    client = await _client()
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


def _who(args: argparse.Namespace) -> str:
    return str(getattr(args, "requested_by", None) or getpass.getuser())


async def vm_create(args: argparse.Namespace) -> int:
    from starter.cli.storage import disks_from_args

    req = validated(CreateVmRequest, name=args.name, vcpus=args.vcpus, memory_mib=args.memory_mib,
                    host=args.host, start=args.start, disks=disks_from_args(args),
                    requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.create_vm(req))


async def vm_start(args: argparse.Namespace) -> int:
    req = validated(StartVmRequest, name=args.name, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.start_vm(req))


async def vm_stop(args: argparse.Namespace) -> int:
    req = validated(StopVmRequest, name=args.name, force=args.force,
                    timeout_seconds=args.timeout, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.stop_vm(req))


async def vm_destroy(args: argparse.Namespace) -> int:
    req = validated(DestroyVmRequest, name=args.name, keep_disks=args.keep_disks,
                    requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.destroy_vm(req))


async def host_add(args: argparse.Namespace) -> int:
    spec = validated(HostSpec, name=args.name, uri=args.uri, vcpus=args.vcpus,
                     memory_mib=args.memory_mib, migration_uri=args.migration_uri)
    client = await _client()
    host, created = await client.add_host(spec, probe=not args.no_probe)
    if args.json:
        render.print_json(host)
    else:
        console.print(f"host [bold]{host.name}[/] {'added' if created else 'already registered'}"
                      f" ({host.vcpus} vCPUs, {host.memory_mib} MiB, {host.uri})")
    return 0


# --- reads -----------------------------------------------------------------------------------


async def host_list(args: argparse.Namespace) -> int:
    hosts = await (await _client()).hosts()
    render.print_json(hosts) if args.json else console.print(render.hosts_table(hosts))
    return 0


async def vm_list(args: argparse.Namespace) -> int:
    vms = await (await _client()).vms(host=args.host)
    render.print_json(vms) if args.json else console.print(render.vms_table(vms))
    return 0


async def tasks_list(args: argparse.Namespace) -> int:
    tasks = await (await _client()).tasks(kind=args.kind, vm=args.vm, host=args.host,
                                          pool=args.pool, state=args.state, limit=args.limit)
    render.print_json(tasks) if args.json else console.print(render.tasks_table(tasks))
    return 0


async def tasks_show(args: argparse.Namespace) -> int:
    status = await (await _client()).task(args.id).describe()
    render.print_json(status) if args.json else console.print(render.task_view(status))
    return 0


async def tasks_watch(args: argparse.Namespace) -> int:
    client = await _client()

    async def snapshot() -> Any:
        tasks = await client.tasks(kind=args.kind, vm=args.vm, host=args.host, pool=args.pool,
                                   state=args.state, limit=args.limit)
        return render.queue_view(tasks)

    await render.live(snapshot, console, every_seconds=args.every, times=args.times)
    return 0


async def tasks_cancel(args: argparse.Namespace) -> int:
    client = await _client()
    await client.cancel(args.id)
    if args.json:
        render.print_json({"id": args.id, "cancel_requested": True})
    else:
        console.print(f"cancellation requested for [bold]{args.id}[/]: it undoes what it did "
                      "and releases what it held")
    return 0


async def batch(args: argparse.Namespace) -> int:
    items = _batch_items(sys.stdin.read() if args.file == "-" else _read(args.file))
    for item in items:  # --after: the whole batch waits; --requested-by: every task's author
        item.after = [*item.after, *args.after]
        item.request.setdefault("requested_by", _who(args))
    submitted = await (await _client()).submit_batch(items)
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
    try:
        return Path(path).read_text()
    except OSError as err:
        raise RequestError("file", f"cannot read {path}: {err.strerror}") from None


def _batch_items(text: str) -> list[BatchItem]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError("file", f"not JSON: {err}") from None
    entries = data.get("tasks") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise RequestError("tasks", "expected a non-empty list of tasks (or {\"tasks\": [...]})")
    items = []
    for i, entry in enumerate(entries):
        try:
            items.append(BatchItem.model_validate(entry))
        except ValidationError as err:
            failure = request_error(err)
            raise RequestError(f"tasks[{i}].{failure.field}", failure.reason) from None
    return items


async def reconcile_now(args: argparse.Namespace) -> int:
    req = validated(ReconcileRequest, grace_seconds=args.grace, requested_by=_who(args),
                    after=args.after)
    return await _submit(args, lambda c: c.submit("Reconcile", req))


async def reconcile_schedule(args: argparse.Namespace) -> int:
    from workflows.reconcile import ensure_reconcile_schedule

    client = await _client()
    every = args.every or client.settings.reconcile_interval_seconds
    created = await ensure_reconcile_schedule(client.temporal, client.settings, every)
    console.print(f"reconciliation schedule {'created' if created else 'updated'}: "
                  f"every {every:g} s")
    return 0


# --- operations ------------------------------------------------------------------------------


def db_upgrade(args: argparse.Namespace) -> int:
    from taskomatic.inventory.db import ensure_database, upgrade

    url = get_settings().database_url
    created = ensure_database(url)
    applied = upgrade(url)
    console.print(("created the database; " if created else "")
                  + (f"applied {', '.join(applied)}" if applied else "schema is up to date"))
    return 0


def worker(args: argparse.Namespace) -> int:
    import worker as worker_module

    worker_module.main()
    return 0


def dev(args: argparse.Namespace) -> int:
    from starter.dev.stack import run_dev

    return run_dev(hosts=args.hosts, demo=args.demo, lab=args.lab)


# --- wiring ----------------------------------------------------------------------------------


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


def _task_filters(sp: argparse.ArgumentParser) -> None:
    for flag in ("--kind", "--vm", "--host", "--pool"):
        sp.add_argument(flag)
    sp.add_argument("--state", choices=TASK_STATES)
    sp.add_argument("--limit", type=int, default=200, help="at most this many tasks")


def _parser() -> argparse.ArgumentParser:
    from starter.cli import (
        storage as cli_storage,  # it builds on this module's verb() and _submit()
    )

    p = argparse.ArgumentParser(prog="taskomatic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nouns = p.add_subparsers(dest="noun", required=True)

    from starter.cli import hosts as cli_hosts  # its verbs build on this module's helpers

    host = nouns.add_parser("host", help="hypervisor hosts").add_subparsers(dest="verb",
                                                                            required=True)
    sp = verb(host, "add", host_add, "register a hypervisor host", read=True)
    sp.add_argument("name")
    sp.add_argument("--uri", required=True, help="libvirt URI, e.g. qemu+tls://h1/system")
    sp.add_argument("--vcpus", type=int, default=16)
    sp.add_argument("--memory-mib", type=int, default=32768)
    sp.add_argument("--no-probe", action="store_true", help="do not check that the URI answers")
    sp.add_argument("--migration-uri", help="where it receives live migrations, e.g. tcp://h1")
    verb(host, "list", host_list, "hosts with capacity and usage", read=True)

    vm = nouns.add_parser("vm", help="virtual machines").add_subparsers(dest="verb", required=True)
    sp = verb(vm, "create", vm_create, "define a VM (and start it with --start)", write=True)
    sp.add_argument("name")
    sp.add_argument("--memory-mib", type=int, required=True)
    sp.add_argument("--vcpus", type=int, required=True)
    sp.add_argument("--host", help="place on this host (default: least loaded host)")
    sp.add_argument("--start", action="store_true")
    cli_storage.add_disk_options(sp)
    verb(vm, "start", vm_start, "start a VM", write=True).add_argument("name")
    sp = verb(vm, "destroy", vm_destroy, "power off, undefine and forget a VM (and delete the "
              "volumes it owns)", write=True)
    sp.add_argument("name")
    sp.add_argument("--keep-disks", action="store_true", help="keep the volumes the VM owns")
    sp = verb(vm, "stop", vm_stop, "shut a VM down (graceful, then forced)", write=True)
    sp.add_argument("name")
    sp.add_argument("--force", action="store_true", help="power off at once")
    sp.add_argument("--timeout", type=float, help="seconds to wait for a graceful shutdown")
    sp = verb(vm, "list", vm_list, "VMs from the inventory", read=True)
    sp.add_argument("--host")
    cli_hosts.add_commands(host, vm)

    cli_storage.add_commands(nouns)
    tasks = nouns.add_parser("tasks", help="the task queue").add_subparsers(dest="verb",
                                                                           required=True)
    sp = verb(tasks, "list", tasks_list, "tasks, newest first", read=True)
    _task_filters(sp)
    verb(tasks, "show", tasks_show, "one task: state, what it waits on, steps, result or error",
         read=True).add_argument("id")
    sp = verb(tasks, "watch", tasks_watch, "a live table of the queue (Ctrl-C to leave)")
    _task_filters(sp)
    sp.add_argument("--every", type=float, default=1.0, help="refresh interval in seconds")
    sp.add_argument("--times", type=int, help="refresh this many times, then exit")
    verb(tasks, "cancel", tasks_cancel, "cancel a task: it undoes its steps and releases its "
         "resources", read=True).add_argument("id")

    sp = verb(nouns, "batch", batch, "submit several tasks with dependencies among them "
              "(JSON file, or - for stdin)", write=True)
    sp.add_argument("file")
    rec = nouns.add_parser("reconcile", help="compare inventory, libvirt and the queue"
                           ).add_subparsers(dest="verb", required=True)
    sp = verb(rec, "now", reconcile_now, "run a reconciliation now", write=True)
    sp.add_argument("--grace", type=float, default=60.0,
                    help="leave claims and reservations younger than this (seconds) alone")
    sp = verb(rec, "schedule", reconcile_schedule, "create or update the periodic schedule")
    sp.add_argument("--every", type=float, help="seconds between runs (default: the setting)")
    cli_lab.add_commands(nouns)
    db = nouns.add_parser("db", help="inventory database").add_subparsers(dest="verb",
                                                                         required=True)
    verb(db, "upgrade", db_upgrade, "create the database if needed and apply migrations")
    sp = nouns.add_parser("worker", help="run a worker")
    sp.set_defaults(fn=worker)
    sp = nouns.add_parser("dev", help="run the local dev stack (Temporal, PostgreSQL, worker)")
    sp.add_argument("--hosts", type=int, default=3,
                    help="hosts to create (libvirt test-driver hosts, or lab hosts with --lab)")
    sp.add_argument("--demo", action="store_true", help="run the scripted demo, then exit")
    sp.add_argument("--lab", action="store_true",
                    help="use `taskomatic lab` hosts (real libvirtd + QEMU; root) instead")
    sp.set_defaults(fn=dev)
    codec_server.add_commands(nouns)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = get_settings()
    # The CLI reports problems itself; its own log lines would only repeat them.
    serving = args.noun in ("worker", "codec-server")
    configure_logging(settings.log_format, settings.log_level if serving else "error")
    code = run(args)
    if argv is None and args.noun != "dev":  # dev: interpreter teardown stops its PostgreSQL
        # A real process skips interpreter teardown, which the SDK's runtime threads can trip
        # over (PyGILState_Release aborts; see worker.py), turning success into a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run(args: argparse.Namespace) -> int:
    try:
        outcome = args.fn(args)
        return int(asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome)
    except RequestError as err:
        errors.print(f"[red]error:[/] {err}")
        return 2
    except (ServiceUnavailable, CodecError) as err:  # CodecError: keys or TLS files unusable
        errors.print(f"[red]error:[/] {err}")
        return 3
    except Exception as err:
        info = error_info(err)
        if info.type is ErrorType.DATABASE_UNAVAILABLE:
            errors.print(f"[red]error:[/] {info.message}")
            return 3
        raise
    except KeyboardInterrupt:
        return 130
