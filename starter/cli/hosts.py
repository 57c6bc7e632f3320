"""``taskomatic host …``: register and list hypervisor hosts, and host maintenance.

    taskomatic host add NAME --uri URI [--cluster C] [--vcpus N] [--memory-mib N]
        [--migration-uri URI]
    taskomatic host list
    taskomatic host clear NAME [--dry-run] [--stop-unmigratable] [--copy-storage]
    taskomatic host activate NAME
    taskomatic host restore NAME

With ``--wait`` a clear or restore shows moved / in flight / remaining / failed and the time
left, live, then the per-VM report; ``--dry-run`` always prints the plan and changes nothing.
Exit status as for every write verb, and 1 when a VM could not move (a clear then ends in
``maintenance_failed``).
"""

from __future__ import annotations

import argparse
from typing import Any

from starter import TaskError, validated
from starter.cli import common, render
from starter.cli.common import (
    Submission,
    console,
    noun,
    report_failure,
    report_submitted,
    show,
    verb,
    who,
)
from taskomatic.models import ActivateHostRequest, ClearHostRequest, HostSpec, RestoreHostRequest


async def host_add(args: argparse.Namespace) -> int:
    spec = validated(HostSpec, name=args.name, uri=args.uri, cluster=args.cluster,
                     vcpus=args.vcpus, memory_mib=args.memory_mib,
                     migration_uri=args.migration_uri)
    client = await common.connect()
    host, created = await client.add_host(spec, probe=not args.no_probe)
    shares = await client.share_pools(host.name)  # the cluster's shared pools, to this host
    brought = "".join(f"\nshared pool brought to it: {task.id}" for task in shares)
    return show(args, host, f"host [bold]{host.name}[/] "
                            f"{'added' if created else 'already registered'} in cluster "
                            f"{host.cluster} ({host.vcpus} vCPUs, {host.memory_mib} MiB,"
                            f" {host.uri}){brought}")


async def host_list(args: argparse.Namespace) -> int:
    hosts = await (await common.connect()).hosts()
    render.print_json(hosts) if args.json else console.print(render.hosts_table(hosts))
    return 0


async def _host_task(args: argparse.Namespace, start: Submission,
                     always_wait: bool = False) -> int:
    """Start a host task; with ``--wait`` (or ``always_wait``) follow its moves and show the
    per-VM report: 1 if a VM could not move."""
    client = await common.connect()
    handle = await start(client)
    if not (args.wait or always_wait):
        return report_submitted(args, handle)
    try:
        result = (await client.host_result(handle) if args.json
                  else await render.follow_host_task(client, handle, console))
    except TaskError as err:
        return report_failure(args, handle, err)
    if args.json:
        render.print_json(result)
    else:
        console.print(render.report_table(result))
        moved = sum(1 for o in result.outcomes if o.outcome in ("moved", "already moved"))
        console.print(f"{result.kind} {result.host}: [bold]{result.state or '-'}[/] "
                      f"({moved} moved, {len(result.failed)} could not move, {result.runs} runs)")
    return 1 if result.failed else 0


async def host_clear(args: argparse.Namespace) -> int:
    req = validated(ClearHostRequest, host=args.name, dry_run=args.dry_run,
                    stop_unmigratable=args.stop_unmigratable,
                    copy_storage=args.copy_storage, requested_by=who(args), after=args.after)
    return await _host_task(args, lambda c: c.clear_host(req), always_wait=args.dry_run)


async def host_activate(args: argparse.Namespace) -> int:
    req = validated(ActivateHostRequest, host=args.name, requested_by=who(args),
                    after=args.after)
    return await _host_task(args, lambda c: c.activate_host(req))


async def host_restore(args: argparse.Namespace) -> int:
    req = validated(RestoreHostRequest, host=args.name, requested_by=who(args),
                    after=args.after)
    return await _host_task(args, lambda c: c.restore_host(req))


def add_commands(nouns: Any) -> None:
    """Add the ``host`` noun and its verbs."""
    host = noun(nouns, "host", "hypervisor hosts")
    sp = verb(host, "add", host_add, "register a hypervisor host", read=True)
    sp.add_argument("name")
    sp.add_argument("--uri", required=True, help="libvirt URI, e.g. qemu+tls://h1/system")
    sp.add_argument("--cluster", help="the cluster it joins (default: the default cluster of "
                    "its hypervisor type)")
    sp.add_argument("--vcpus", type=int,
                    help="capacity (default: libvirt's CPUs times the cluster's vCPU overcommit)")
    sp.add_argument("--memory-mib", type=int,
                    help="capacity (default: libvirt's memory times the cluster's memory "
                    "overcommit)")
    sp.add_argument("--no-probe", action="store_true", help="do not check that the URI answers")
    sp.add_argument("--migration-uri", help="where it receives live migrations, e.g. tcp://h1")
    verb(host, "list", host_list, "hosts with capacity and usage", read=True)
    sp = verb(host, "clear", host_clear, "put a host in maintenance and move its VMs away",
              write=True)
    sp.add_argument("name")
    sp.add_argument("--dry-run", action="store_true",
                    help="print each VM's planned destination; change nothing")
    sp.add_argument("--stop-unmigratable", action="store_true",
                    help="stop the VMs that cannot move")
    sp.add_argument("--copy-storage", action="store_true",
                    help="move VMs on local pools with a copy of their disks (live)")
    verb(host, "activate", host_activate, "return a host to service (moved VMs keep their "
         "origin)", write=True).add_argument("name")
    verb(host, "restore", host_restore, "migrate the VMs cleared off a host back to it",
         write=True).add_argument("name")
