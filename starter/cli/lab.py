"""``taskomatic lab up|down|status``: a local multi-host libvirt lab (see the ``lab`` package).

Exit status: 0 done (also "already up" / "nothing to stop"); 1 the lab failed to start or stop
(the message says why, nothing is left half-made); 3 the inventory database could not be reached.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from lab import LabError, control
from starter.cli import render
from starter.cli.common import console, errors, noun, verb
from taskomatic.inventory.db import is_reachable, with_dbname
from taskomatic.settings import get_settings


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else get_settings().lab_dir


def _database_url(args: argparse.Namespace) -> str | None:
    return None if getattr(args, "no_register", False) else get_settings().database_url


def lab_up(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is not None and not is_reachable(_server_url(url)):
        errors.print(f"[red]error:[/] the inventory database at {url.rpartition('@')[2]} does not"
                     " answer; start it (e.g. `taskomatic dev`) or pass --no-register")
        return 3
    try:
        report = control.lab_up(_lab_dir(args), args.hosts, network=args.network,
                                vcpus=args.vcpus, memory_mib=args.memory_mib, database_url=url,
                                tls_pki=Path(args.tls_pki) if args.tls_pki else None)
    except LabError as err:
        errors.print(f"[red]error:[/] {err}")
        return 1
    if args.json:
        render.print_json({"changed": report.changed, "notes": report.notes,
                           "seconds": round(report.seconds, 3),
                           "state": report.state.model_dump(mode="json") if report.state else None})
        return 0
    for note in report.notes:
        console.print(f"[dim]{note}[/]")
    if report.changed and report.state is not None:
        console.print(f"[green]✔[/] lab up: {len(report.state.hosts)} hosts in "
                      f"{report.seconds:.1f} s ({report.state.dir})")
    _show({"hosts": [h.model_dump(mode="json") for h in report.state.hosts]}
          if report.state else {"hosts": []})
    return 0


def _server_url(url: str) -> str:
    """The inventory may not exist yet: reachability is checked on the server's own database."""
    return with_dbname(url, "postgres")


def lab_down(args: argparse.Namespace) -> int:
    try:
        report = control.lab_down(_lab_dir(args), database_url=_database_url(args))
    except LabError as err:
        errors.print(f"[red]error:[/] {err}")
        return 1
    if args.json:
        render.print_json({"changed": report.changed, "notes": report.notes,
                           "seconds": round(report.seconds, 3)})
        return 0
    for note in report.notes:
        console.print(f"[dim]{note}[/]")
    if report.changed:
        console.print(f"[green]✔[/] lab down in {report.seconds:.1f} s: no daemon, guest, "
                      "namespace or link of it is left")
    return 0


def lab_status(args: argparse.Namespace) -> int:
    found = control.lab_status(_lab_dir(args))
    if args.json:
        render.print_json(found)
        return 0
    if not found["hosts"]:
        console.print(f"no lab is up in {found['dir']}")
        return 0
    console.print(f"lab in {found['dir']}: supervisor pid {found['supervisor_pid']} "
                  + ("[green]running[/]" if found["up"] else "[red]not running[/]"))
    _show(found)
    return 0


def _show(found: dict[str, Any]) -> None:
    table = Table("host", "libvirtd", "libvirt URI", "migration URI", "guests")
    for host in found["hosts"]:
        pid = str(host.get("pid") or "-")
        if host.get("alive") is False:
            pid += " [red](dead)[/]"
        guests = host.get("guests")
        shown = ", ".join(f"{n} ({s})" for n, s in guests.items()) if guests else "-"
        uri = host["uri"].partition("&")[0]
        if host.get("tls_port"):
            uri += f"\nqemu+tls://127.0.0.1:{host['tls_port']}/system"
        table.add_row(host["name"], pid, uri, host["migration_uri"],
                      shown if guests is not None else "")
    console.print(table)


def add_commands(nouns: Any) -> None:
    """Add the ``lab`` noun and its verbs."""
    lab = noun(nouns, "lab", "a local multi-host libvirt lab (root)")
    sp = verb(lab, "up", lab_up, "start N libvirtd hosts and register them", read=True)
    sp.add_argument("--hosts", type=int, default=2, help="number of hosts (1-16)")
    sp.add_argument("--network", action="store_true",
                    help="give each host its own network namespace and address")
    sp.add_argument("--vcpus", type=int, default=8, help="capacity registered per host")
    sp.add_argument("--memory-mib", type=int, default=4096, help="capacity registered per host")
    sp.add_argument("--tls-pki", metavar="DIR",
                    help="also listen with TLS on 127.0.0.1 (qemu+tls://, client certificates "
                         "required) with cacert.pem, servercert.pem, serverkey.pem from DIR")
    sp.add_argument("--no-register", action="store_true", help="leave the inventory alone")
    sp = verb(lab, "down", lab_down, "stop every guest and daemon of the lab", read=True)
    sp.add_argument("--no-register", action="store_true", help="leave the inventory alone")
    sp = verb(lab, "status", lab_status, "hosts, daemon pids and guests", read=True)
    for parser in lab.choices.values():
        parser.add_argument("--dir", help="lab directory (default: TASKOMATIC_LAB_DIR, "
                                          ".taskomatic/lab)")
