"""Running the stack: ``taskomatic db upgrade``, ``taskomatic worker``, ``taskomatic dev`` and
``taskomatic codec-server``.

The worker and the codec server are services beside the starter, not part of it: their commands
replace this process with ``python -m worker`` / ``python -m codec_server`` (same interpreter,
same environment), which then own the exit status and the output. ``codec-server`` hands them
every argument after its name (``--address``, ``--help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from starter.api.serve import serve as serve_api
from starter.cli.common import console, noun, verb
from starter.dev import run_dev
from taskomatic.inventory.db import ensure_database, upgrade
from taskomatic.settings import get_settings


def db_upgrade(args: argparse.Namespace) -> int:
    url = get_settings().database_url
    created = ensure_database(url)
    applied = upgrade(url)
    console.print(("created the database; " if created else "")
                  + (f"applied {', '.join(applied)}" if applied else "schema is up to date"))
    return 0


def run_program(module: str, argv: list[str]) -> NoReturn:
    """Replace this process with ``python -P -m MODULE ARGV`` run by this interpreter (``-P``:
    never a ``worker.py`` that happens to lie in the current directory)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-P", "-m", module, *argv])


def worker(args: argparse.Namespace) -> int:
    run_program("worker", [])


def codec_server(args: argparse.Namespace) -> int:
    run_program("codec_server", args.rest)


def api(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.address:
        settings = settings.model_copy(update={"api_address": args.address})
    return serve_api(settings)


def dev(args: argparse.Namespace) -> int:
    return run_dev(hosts=args.hosts, demo=args.demo, lab=args.lab)


def add_commands(nouns: Any) -> None:
    """Add ``db upgrade``, ``worker``, ``dev`` and ``codec-server``; the last takes the rest of
    the command line as is (``takes_rest``: ``starter.cli.main`` puts it in ``args.rest``)."""
    db = noun(nouns, "db", "inventory database")
    verb(db, "upgrade", db_upgrade, "create the database if needed and apply migrations")
    sp = nouns.add_parser("worker", help="run a worker")
    sp.set_defaults(fn=worker)
    sp = nouns.add_parser("api", help="serve the HTTP API (FastAPI on uvicorn)")
    sp.add_argument("--address", help="host:port (default: TASKOMATIC_API_ADDRESS, "
                                      "127.0.0.1:8235)")
    sp.set_defaults(fn=api)
    sp = nouns.add_parser("dev", help="run the local dev stack (Temporal, PostgreSQL, worker)")
    sp.add_argument("--hosts", type=int, default=3,
                    help="hosts to create (libvirt test-driver hosts, or lab hosts with --lab)")
    sp.add_argument("--demo", action="store_true", help="run the scripted demo, then exit")
    sp.add_argument("--lab", action="store_true",
                    help="use `taskomatic lab` hosts (real libvirtd + QEMU; root) instead")
    sp.set_defaults(fn=dev)
    # Every argument after `codec-server` goes to the codec server, `--help` included.
    sp = nouns.add_parser("codec-server", help="decrypt payloads for the Temporal Web UI",
                          add_help=False)
    sp.set_defaults(fn=codec_server, takes_rest=True)
