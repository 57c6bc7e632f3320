"""The ``taskomatic`` command line.

Exit status: 0 success; 1 a task failed; 2 the request was refused (bad input, named field);
3 a service (Temporal, PostgreSQL) could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console

from starter import cli_lab, render
from starter.client import RequestError, TaskError, TaskHandle, TaskomaticClient, validated
from taskomatic.errors import ErrorType, error_info
from taskomatic.logs import configure_logging
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostSpec,
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
            f"cannot reach Temporal at {settings.temporal_address} ({err}); is `taskomatic dev` "
            "or a worker stack running? (settings: TASKOMATIC_TEMPORAL_ADDRESS or .taskomatic/env)"
        ) from None


# --- writes: every one returns a task, shown live with --wait --------------------------------


async def _submit(args: argparse.Namespace, make: Callable[[TaskomaticClient],
                                                           Awaitable[TaskHandle]]) -> int:
    client = await _client()
    handle = await make(client)
    if not args.wait:
        if args.json:
            render.print_json({"id": handle.id, "kind": handle.kind})
        else:
            console.print(f"submitted {handle.kind} task [bold]{handle.id}[/]")
        return 0
    try:
        if args.json:
            result = await handle.result()
        else:
            result = await render.follow(handle, console)
    except TaskError as err:
        if args.json:
            render.print_json({"id": handle.id, "error": err.failure.model_dump(mode="json")})
        else:
            errors.print(render.failure_text(err.failure))
        return 1
    if args.json:
        render.print_json(result)
    else:
        where = f" on {result.host}" if result.host else ""
        console.print(f"[green]✔[/] {result.kind} {result.vm}{where}: "
                      f"{result.state or 'gone'} ({'; '.join(result.notes)})")
    return 0


def _who(args: argparse.Namespace) -> str:
    return str(getattr(args, "requested_by", None) or getpass.getuser())


async def vm_create(args: argparse.Namespace) -> int:
    req = validated(CreateVmRequest, name=args.name, vcpus=args.vcpus, memory_mib=args.memory_mib,
                    host=args.host, start=args.start, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.create_vm(req))


async def vm_start(args: argparse.Namespace) -> int:
    req = validated(StartVmRequest, name=args.name, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.start_vm(req))


async def vm_stop(args: argparse.Namespace) -> int:
    req = validated(StopVmRequest, name=args.name, force=args.force,
                    timeout_seconds=args.timeout, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.stop_vm(req))


async def vm_destroy(args: argparse.Namespace) -> int:
    req = validated(DestroyVmRequest, name=args.name, requested_by=_who(args), after=args.after)
    return await _submit(args, lambda c: c.destroy_vm(req))


async def host_add(args: argparse.Namespace) -> int:
    spec = validated(HostSpec, name=args.name, uri=args.uri, vcpus=args.vcpus,
                     memory_mib=args.memory_mib)
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
    tasks = await (await _client()).tasks(kind=args.kind, vm=args.vm, host=args.host)
    if args.state:
        tasks = [t for t in tasks if t.state == args.state]
    render.print_json(tasks) if args.json else console.print(render.tasks_table(tasks))
    return 0


async def tasks_show(args: argparse.Namespace) -> int:
    status = await (await _client()).task(args.id).describe()
    render.print_json(status) if args.json else console.print(render.task_view(status))
    return 0


# --- operations ------------------------------------------------------------------------------


def db_upgrade(args: argparse.Namespace) -> int:
    from activities.db import ensure_database, upgrade

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
    from starter.dev import run_dev

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskomatic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nouns = p.add_subparsers(dest="noun", required=True)

    host = nouns.add_parser("host", help="hypervisor hosts").add_subparsers(dest="verb",
                                                                            required=True)
    sp = verb(host, "add", host_add, "register a hypervisor host", read=True)
    sp.add_argument("name")
    sp.add_argument("--uri", required=True, help="libvirt URI, e.g. qemu+tls://h1/system")
    sp.add_argument("--vcpus", type=int, default=16)
    sp.add_argument("--memory-mib", type=int, default=32768)
    sp.add_argument("--no-probe", action="store_true", help="do not check that the URI answers")
    verb(host, "list", host_list, "hosts with capacity and usage", read=True)

    vm = nouns.add_parser("vm", help="virtual machines").add_subparsers(dest="verb", required=True)
    sp = verb(vm, "create", vm_create, "define a VM (and start it with --start)", write=True)
    sp.add_argument("name")
    sp.add_argument("--memory-mib", type=int, required=True)
    sp.add_argument("--vcpus", type=int, required=True)
    sp.add_argument("--host", help="place on this host (default: least loaded host)")
    sp.add_argument("--start", action="store_true")
    for name, fn, text in (("start", vm_start, "start a VM"),
                           ("destroy", vm_destroy, "power off, undefine and forget a VM")):
        verb(vm, name, fn, text, write=True).add_argument("name")
    sp = verb(vm, "stop", vm_stop, "shut a VM down (graceful, then forced)", write=True)
    sp.add_argument("name")
    sp.add_argument("--force", action="store_true", help="power off at once")
    sp.add_argument("--timeout", type=float, help="seconds to wait for a graceful shutdown")
    sp = verb(vm, "list", vm_list, "VMs from the inventory", read=True)
    sp.add_argument("--host")

    tasks = nouns.add_parser("tasks", help="the task queue").add_subparsers(dest="verb",
                                                                           required=True)
    sp = verb(tasks, "list", tasks_list, "recent tasks, newest first", read=True)
    for flag in ("--kind", "--vm", "--host"):
        sp.add_argument(flag)
    sp.add_argument("--state", choices=["running", "complete", "error", "cancelled",
                                        "terminated", "timed_out"])
    verb(tasks, "show", tasks_show, "one task: steps, progress, result or error",
         read=True).add_argument("id")

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
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = get_settings()
    # The CLI reports problems itself; its own log lines would only repeat them.
    configure_logging(settings.log_format, settings.log_level if args.noun == "worker" else "error")
    sys.exit(run(args))


def run(args: argparse.Namespace) -> int:
    try:
        outcome = args.fn(args)
        return int(asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome)
    except RequestError as err:
        errors.print(f"[red]error:[/] {err}")
        return 2
    except ServiceUnavailable as err:
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
