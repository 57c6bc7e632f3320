"""``taskomatic vm …``: create, start, stop, destroy, list and migrate virtual machines.

    taskomatic vm create NAME --vcpus N --memory-mib N [--host HOST] [--cluster C]
        [--group G [--group-policy P]] [--start] [disk options]
    taskomatic vm start|stop|destroy NAME
    taskomatic vm list [--host HOST]
    taskomatic vm migrate NAME [--to HOST] [--copy-storage]

Every verb but ``list`` submits a task (see ``common.submit``).
"""

from __future__ import annotations

import argparse
from typing import Any

from starter import validated
from starter.cli import common, render
from starter.cli.common import console, noun, submit, verb, who
from starter.cli.storage import add_disk_options, disks_from_args
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    MigrateVmRequest,
    StartVmRequest,
    StopVmRequest,
)


async def vm_create(args: argparse.Namespace) -> int:
    req = validated(CreateVmRequest, name=args.name, vcpus=args.vcpus, memory_mib=args.memory_mib,
                    host=args.host, cluster=args.cluster, group=args.group,
                    group_policy=args.group_policy, start=args.start, disks=disks_from_args(args),
                    requested_by=who(args), after=args.after)
    return await submit(args, lambda c: c.create_vm(req))


async def vm_start(args: argparse.Namespace) -> int:
    req = validated(StartVmRequest, name=args.name, requested_by=who(args), after=args.after)
    return await submit(args, lambda c: c.start_vm(req))


async def vm_stop(args: argparse.Namespace) -> int:
    req = validated(StopVmRequest, name=args.name, force=args.force,
                    timeout_seconds=args.timeout, requested_by=who(args), after=args.after)
    return await submit(args, lambda c: c.stop_vm(req))


async def vm_destroy(args: argparse.Namespace) -> int:
    req = validated(DestroyVmRequest, name=args.name, keep_disks=args.keep_disks,
                    requested_by=who(args), after=args.after)
    return await submit(args, lambda c: c.destroy_vm(req))


async def vm_migrate(args: argparse.Namespace) -> int:
    req = validated(MigrateVmRequest, name=args.name, to=args.to,
                    copy_storage=args.copy_storage, requested_by=who(args), after=args.after)
    return await submit(args, lambda c: c.migrate_vm(req))


async def vm_list(args: argparse.Namespace) -> int:
    client = await common.connect()
    vms = await client.vms(host=await common.existing(client, "host", "host", args.host))
    render.print_json(vms) if args.json else console.print(render.vms_table(vms))
    return 0


def add_commands(nouns: Any) -> None:
    """Add the ``vm`` noun and its verbs."""
    vm = noun(nouns, "vm", "virtual machines")
    sp = verb(vm, "create", vm_create, "define a VM (and start it with --start)", write=True)
    sp.add_argument("name")
    sp.add_argument("--memory-mib", type=int, required=True)
    sp.add_argument("--vcpus", type=int, required=True)
    sp.add_argument("--host", help="place on this host (default: placement's choice)")
    sp.add_argument("--cluster", help="place in this cluster (default: any)")
    sp.add_argument("--group", help="its affinity group (made on first use)")
    sp.add_argument("--group-policy",
                    choices=("anti-affinity", "soft-anti-affinity", "affinity"),
                    help="the rule of a new group (default anti-affinity)")
    sp.add_argument("--start", action="store_true")
    add_disk_options(sp)
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
    sp = verb(vm, "migrate", vm_migrate, "move a VM to another host (live when it can)",
              write=True)
    sp.add_argument("name")
    sp.add_argument("--to", help="destination host (default: placement picks one)")
    sp.add_argument("--copy-storage", action="store_true",
                    help="copy disks on local pools to a local pool of the destination (live)")
