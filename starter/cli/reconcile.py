"""``taskomatic reconcile now|schedule``: compare the inventory, libvirt and the queue.

``now`` submits a Reconcile task (a write verb: --wait, --json, --after); ``schedule`` creates or
updates the periodic Temporal schedule that runs it (every ``--every`` seconds, by default
``TASKOMATIC_RECONCILE_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import argparse
from typing import Any

from starter import validated
from starter.cli import common
from starter.cli.common import console, noun, submit, verb, who
from taskomatic.models import ReconcileRequest
from workflows.reconcile import ensure_reconcile_schedule


async def reconcile_now(args: argparse.Namespace) -> int:
    req = validated(ReconcileRequest, grace_seconds=args.grace, requested_by=who(args),
                    after=args.after)
    return await submit(args, lambda c: c.start(req))


async def reconcile_schedule(args: argparse.Namespace) -> int:
    client = await common.connect()
    every = args.every or client.settings.reconcile_interval_seconds
    created = await ensure_reconcile_schedule(client.temporal, client.settings, every)
    console.print(f"reconciliation schedule {'created' if created else 'updated'}: "
                  f"every {every:g} s")
    return 0


def add_commands(nouns: Any) -> None:
    """Add the ``reconcile`` noun and its verbs."""
    rec = noun(nouns, "reconcile", "compare inventory, libvirt and the queue")
    sp = verb(rec, "now", reconcile_now, "run a reconciliation now", write=True)
    sp.add_argument("--grace", type=float, default=60.0,
                    help="leave claims and reservations younger than this (seconds) alone")
    sp = verb(rec, "schedule", reconcile_schedule, "create or update the periodic schedule")
    sp.add_argument("--every", type=float, help="seconds between runs (default: the setting)")
