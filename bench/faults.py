"""``python -m bench.faults --runs N``: the randomized fault test of clear-host (issue 12).

Each run clears a test-driver host of ``vms`` VMs (most running, some shut off, of mixed sizes)
onto ``hosts - 1`` others and disturbs the clear once, at a point drawn from a seeded random
generator, by one of the fault kinds:

- ``cancel-clear``: the ClearHost task is cancelled (``tasks cancel``);
- ``cancel-child``: one child MigrateVm still in flight is cancelled;
- ``stop-worker``: the worker is shut down (``Worker.shutdown``, as on SIGTERM) and, after a
  pause, a new one is started;
- ``terminate-clear``: the ClearHost task is terminated from outside;
- ``kill-destination`` (hosts that can die only: the lab's, ``tests/test_lab_fault_runs.py``): the
  hypervisor of a migration's destination is killed, and started again once the tasks ended.

After the last two a ``Reconcile`` runs, the safety net the design relies on when a task cannot
clean up (terminated) or cannot learn where a VM is (its host was dead); what the tasks left is
reported ("left for reconcile"), what is still wrong after the Reconcile is a violation.

Every migration takes ``move_seconds`` (heartbeating), with the real cold move half-way, so a
migration in flight is ``before-move`` (nothing happened yet) or ``after-move`` (the VM has moved,
its task does not know yet), as a real migration job is before and after its switch-over. A fault
point is: once ``after_moved`` VMs have moved and, unless the phase is ``anywhere``, some
migration is in ``phase``, ``delay`` seconds later (within that phase). Runs take the phases in
turn (``bench.fault_plans.plan_run``), so every three runs of a kind cover each of them.
After the fault every task of the run (the clear and each child) must end within
``settle_seconds``; then the invariants of ``bench.fault_checks`` are checked against libvirt.

The runner needs a Temporal client, settings, a database and the ``Hypervisors`` whose
connections keep the test-driver hosts alive: ``tests/test_fault_runs.py`` hands it the test
session's, this module's ``main`` a private stack like the other benches'. Run plans follow from
``seed`` and the run's index alone (``random.Random(f"{seed}:{index}")``), so ``--seed S
--start I --runs 1 --kinds K`` replays run I's plan (its timing is the machine's).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from bench.fault_hosts import TestDriverHosts
from bench.fault_plans import (
    ALL_FAULT_KINDS,
    FAULT_KINDS,
    HOST_FAULT_KINDS,
    LAB_FAULT_KINDS,
    PHASES,
    PROCESS_FAULT_KINDS,
    Plan,
    Report,
    RunReport,
    Shape,
    plan_run,
)
from bench.fault_rig import FaultRig
from taskomatic.hypervisor import Hypervisors
from taskomatic.settings import Settings

__all__ = [
    "ALL_FAULT_KINDS",
    "FAULT_KINDS",
    "HOST_FAULT_KINDS",
    "LAB_FAULT_KINDS",
    "PHASES",
    "PROCESS_FAULT_KINDS",
    "FaultRig",
    "Plan",
    "Report",
    "RunReport",
    "Shape",
    "TestDriverHosts",
    "main",
    "plan_run",
    "run_faults",
]


async def run_faults(rig: FaultRig, runs: int, seed: int, kinds: Sequence[str] = FAULT_KINDS,
                     start: int = 0, log: Callable[[str], None] | None = None,
                     phases: Sequence[str] = PHASES) -> Report:
    """Runs ``start`` .. ``start + runs - 1`` on ``rig``, planned by ``plan_run``; each run's
    report is passed to ``log`` as it ends."""
    report = Report(seed=seed)
    for index in range(start, start + runs):
        run_seed, plan = plan_run(seed, index, kinds, rig.shape, phases)
        done = await rig.run(index, run_seed, plan)
        report.runs.append(done)
        if log is not None:
            log("\n".join(done.lines()))
    return report


# --- python -m bench.faults ------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100, help="runs (100)")
    p.add_argument("--seed", type=int, default=None, help="seed of the run plans (random)")
    p.add_argument("--start", type=int, default=0, help="index of the first run (0)")
    p.add_argument("--kinds", default=",".join(FAULT_KINDS),
                   help=f"fault kinds, taken in turn ({','.join(FAULT_KINDS)})")
    p.add_argument("--vms", type=int, default=Shape.vms, help=f"VMs per run ({Shape.vms})")
    p.add_argument("--hosts", type=int, default=Shape.hosts,
                   help=f"hosts per run, one the source ({Shape.hosts})")
    p.add_argument("--parallel", type=int, default=Shape.parallel,
                   help=f"moves in flight ({Shape.parallel})")
    p.add_argument("--move-seconds", type=float, default=Shape.move_seconds,
                   help=f"how long each migration takes ({Shape.move_seconds})")
    p.add_argument("--evidence", type=Path, default=Path(".taskomatic/fault-evidence"),
                   help="where the histories of stuck tasks are saved, for a Replayer "
                        "(.taskomatic/fault-evidence)")
    p.add_argument("--pg-url", default=None, help="PostgreSQL server URL (default: local or "
                   "embedded); a fresh database is created and dropped")
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(args.kinds) - set(FAULT_KINDS))
    if unknown or not args.kinds:
        p.error(f"--kinds: unknown {unknown}; choose among {', '.join(FAULT_KINDS)}")
    if min(args.runs, args.vms, args.parallel, args.hosts - 1) < 1:
        p.error("--runs, --vms and --parallel must be >= 1, --hosts >= 2")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


async def _main(args: argparse.Namespace) -> Report:
    from bench.probe import ActivityProbe  # the private stack's pieces, only for the CLI
    from bench.stack import fresh_database, postgres_server, temporal_dev_server
    from taskomatic.inventory.db import get_database
    from taskomatic.logs import configure_logging

    shape = Shape(vms=args.vms, hosts=args.hosts, parallel=args.parallel,
                  move_seconds=args.move_seconds)
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="taskomatic-faults-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log_file = stack.enter_context((tmp / "taskomatic.log").open("w", encoding="utf-8"))
        configure_logging("json", "warning", log_file)
        pg_server, _ = stack.enter_context(postgres_server(args.pg_url, False, tmp / "pg"))
        db_url = stack.enter_context(fresh_database(pg_server,
                                                    f"taskomatic_faults_{uuid.uuid4().hex[:6]}"))
        env = await stack.enter_async_context(
            temporal_dev_server(tmp / "temporal.sqlite", tmp / "temporal.log", ActivityProbe()))
        hv = Hypervisors()
        stack.callback(hv.close)
        settings = Settings(temporal_address=env.client.service_client.config.target_host,
                            database_url=db_url, task_queue="faults", stop_timeout_seconds=5,
                            migration_save_dir=tmp / "saves", _env_file=None)
        db = get_database(db_url)
        hosts = TestDriverHosts(db, hv, tmp / "hosts", shape.hosts, room=shape.vms)
        rig = await stack.enter_async_context(FaultRig(
            env.client, settings, db, hv, hosts, shape, evidence_dir=args.evidence.resolve()))
        print(f"fault runs: seed {args.seed}, {args.runs} runs from {args.start}, kinds "
              f"{','.join(args.kinds)}", file=sys.stderr, flush=True)
        return await run_faults(rig, args.runs, args.seed, args.kinds, args.start,
                                log=lambda text: print(text, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = asyncio.run(_main(args))
    print(report.summary(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
