"""``taskomatic pool …`` and ``taskomatic volume …``, and the disk options of ``vm create``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from starter import RequestError, validated
from starter.cli import common, render
from starter.cli.common import console, noun, submit, verb, who
from taskomatic.models import (
    CreatePoolRequest,
    CreateVolumeRequest,
    DeleteVolumeRequest,
    DestroyPoolRequest,
    PoolRecord,
    RefreshPoolRequest,
    ResizeVolumeRequest,
    SetPoolAutostartRequest,
    VolumeRecord,
)
from taskomatic.units import format_size


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"requested_by": who(args), "after": args.after}


def _volume_arg(text: str) -> tuple[str, str]:
    pool, sep, name = text.partition("/")
    if not sep or not pool or not name:
        raise RequestError("volume", f"must be POOL/VOLUME (got {text!r})")
    return pool, name


# --- pools -----------------------------------------------------------------------------------


async def pool_create(args: argparse.Namespace) -> int:
    source = {key: value for key, value in (
        ("host", args.source_host), ("dir", args.source_dir), ("name", args.source_name),
        ("devices", args.source_device)) if value}
    req = validated(CreatePoolRequest, name=args.name, host=args.host, type=args.type,
                    path=args.path, source=source, build=not args.no_build,
                    autostart=not args.no_autostart, shared=args.shared, **_common(args))
    return await submit(args, lambda c: c.create_pool(req))


async def pool_destroy(args: argparse.Namespace) -> int:
    req = validated(DestroyPoolRequest, name=args.name, delete=args.delete, **_common(args))
    return await submit(args, lambda c: c.destroy_pool(req))


async def pool_refresh(args: argparse.Namespace) -> int:
    req = validated(RefreshPoolRequest, name=args.name, **_common(args))
    return await submit(args, lambda c: c.refresh_pool(req))


async def pool_autostart(args: argparse.Namespace) -> int:
    req = validated(SetPoolAutostartRequest, name=args.name, autostart=args.state == "on",
                    **_common(args))
    return await submit(args, lambda c: c.set_pool_autostart(req))


async def pool_list(args: argparse.Namespace) -> int:
    client = await common.connect()
    pools = await client.pools(host=await common.existing(client, "host", "host", args.host))
    render.print_json(pools) if args.json else console.print(pools_table(pools))
    return 0


async def pool_show(args: argparse.Namespace) -> int:
    pool = await (await common.connect()).pool(args.name)
    if pool is None:
        raise RequestError("name", f"no pool named {args.name!r}")
    if args.json:
        render.print_json(pool)
        return 0
    console.print(pools_table([pool]))
    table = Table("host", "state", "detail", title=f"Hosts that see {pool.name} ({pool.scope})")
    for h in pool.hosts:
        table.add_row(h.host, Text(h.state, style="green" if h.state == "active" else "red"),
                      h.detail or "")
    console.print(table)
    return 0


# --- volumes ---------------------------------------------------------------------------------


async def volume_create(args: argparse.Namespace) -> int:
    pool, name = _volume_arg(args.volume)
    req = validated(CreateVolumeRequest, pool=pool, name=name, capacity=args.size,
                    format=args.format, clone_from=args.clone_from, **_common(args))
    return await submit(args, lambda c: c.create_volume(req))


async def volume_delete(args: argparse.Namespace) -> int:
    pool, name = _volume_arg(args.volume)
    req = validated(DeleteVolumeRequest, pool=pool, name=name, **_common(args))
    return await submit(args, lambda c: c.delete_volume(req))


async def volume_resize(args: argparse.Namespace) -> int:
    pool, name = _volume_arg(args.volume)
    req = validated(ResizeVolumeRequest, pool=pool, name=name, capacity=args.size,
                    **_common(args))
    return await submit(args, lambda c: c.resize_volume(req))


async def volume_list(args: argparse.Namespace) -> int:
    client = await common.connect()
    volumes = await client.volumes(pool=await common.existing(client, "pool", "pool",
                                                              args.pool))
    render.print_json(volumes) if args.json else console.print(volumes_table(volumes))
    return 0


# --- VM disks --------------------------------------------------------------------------------


def add_disk_options(sp: argparse.ArgumentParser) -> None:
    """The disk options of ``vm create``: --disk, --disk-size, --pool, --disk-format."""
    sp.add_argument("--disk", action="append", default=[], metavar="POOL/VOLUME",
                    help="attach an existing volume (repeatable)")
    sp.add_argument("--disk-size", action="append", default=[], metavar="SIZE",
                    help="a new disk of this size in --pool, owned by the VM (repeatable)")
    sp.add_argument("--pool", help="the pool of the --disk-size disks")
    sp.add_argument("--disk-format", choices=["qcow2", "raw"], default="qcow2")


def disks_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``disks`` of a CreateVmRequest from the disk options: attached volumes first, then the
    new disks. RequestError on --pool without --disk-size."""
    if args.pool and not args.disk_size:
        raise RequestError("pool", "--pool is the pool of new disks: give --disk-size too")
    return [*({"volume": volume} for volume in args.disk),
            *({"pool": args.pool, "size": size, "format": args.disk_format}
              for size in args.disk_size)]


# --- tables ----------------------------------------------------------------------------------


def pools_table(pools: Sequence[PoolRecord]) -> Table:
    table = Table("pool", "host", "type", "state", "autostart", "capacity", "available",
                  "volumes", "path", title="Storage pools")
    for p in pools:
        style = "green" if p.state == "active" else "yellow"
        seen = sum(1 for h in p.hosts if h.state == "active")
        host = p.host if p.scope == "local" else f"shared ({seen} of {len(p.hosts)} hosts)"
        table.add_row(p.name, host, p.type, Text(p.state, style=style),
                      "on" if p.autostart else "off", format_size(p.capacity),
                      format_size(p.available), str(p.volume_count), p.path)
    return table


def volumes_table(volumes: Sequence[VolumeRecord]) -> Table:
    table = Table("pool", "volume", "host", "format", "capacity", "allocation", "used by",
                  "owner", title="Volumes")
    for v in volumes:
        table.add_row(v.pool, v.name, v.host, v.format, format_size(v.capacity),
                      format_size(v.allocation), v.used_by or "-", v.owner_vm or "-")
    return table


# --- wiring ----------------------------------------------------------------------------------


def add_commands(nouns: Any) -> None:
    """Add the ``pool`` and ``volume`` nouns and their verbs."""
    pool = noun(nouns, "pool", "storage pools")
    sp = verb(pool, "create", pool_create, "define, build, start and autostart a pool",
              write=True)
    sp.add_argument("name")
    sp.add_argument("--host", required=True,
                    help="the host the pool is on (shared: created from; its cluster shares it)")
    sp.add_argument("--shared", action="store_true",
                    help="define and start it on every host of the host's cluster (dir on a "
                         "path they all share, or netfs)")
    sp.add_argument("--type", choices=["dir", "netfs", "logical"], default="dir")
    sp.add_argument("--path", help="target directory (dir, netfs); /dev/VG for logical")
    sp.add_argument("--source-host", help="NFS server (netfs)")
    sp.add_argument("--source-dir", help="exported directory (netfs)")
    sp.add_argument("--source-name", help="volume group (logical)")
    sp.add_argument("--source-device", action="append", default=[],
                    help="physical volume (logical, repeatable)")
    sp.add_argument("--no-build", action="store_true", help="the storage exists already")
    sp.add_argument("--no-autostart", action="store_true")
    sp = verb(pool, "destroy", pool_destroy, "stop and undefine a pool no VM uses", write=True)
    sp.add_argument("name")
    sp.add_argument("--delete", action="store_true",
                    help="also delete its volumes and backing storage")
    verb(pool, "refresh", pool_refresh, "re-read a pool's volumes into the inventory",
         write=True).add_argument("name")
    sp = verb(pool, "autostart", pool_autostart, "start the pool with its host, or not",
              write=True)
    sp.add_argument("name")
    sp.add_argument("state", choices=["on", "off"])
    verb(pool, "list", pool_list, "pools from the inventory", read=True).add_argument("--host")
    verb(pool, "show", pool_show, "one pool and the hosts that see it",
         read=True).add_argument("name")

    volume = noun(nouns, "volume", "storage volumes")
    sp = verb(volume, "create", volume_create, "create (or clone) a volume", write=True)
    sp.add_argument("volume", metavar="POOL/NAME")
    sp.add_argument("--size", required=True, help="capacity, e.g. 512MiB or 20GiB")
    sp.add_argument("--format", choices=["qcow2", "raw"], default="qcow2")
    sp.add_argument("--clone-from", metavar="BASE", help="copy this volume of the same pool")
    verb(volume, "delete", volume_delete, "delete a volume no VM uses",
         write=True).add_argument("volume", metavar="POOL/NAME")
    sp = verb(volume, "resize", volume_resize, "grow a volume", write=True)
    sp.add_argument("volume", metavar="POOL/NAME")
    sp.add_argument("--size", required=True, help="new capacity, e.g. 40GiB")
    verb(volume, "list", volume_list, "volumes from the inventory",
         read=True).add_argument("--pool")
