"""``python -m bench.faults --runs N``: the randomized fault test of clear-host (issue 12).

Each run clears a test-driver host of ``vms`` VMs (most running, some shut off, of mixed sizes)
onto ``hosts - 1`` others and disturbs the clear once, at a point drawn from a seeded random
generator, by one of the fault kinds:

- ``cancel-clear``: the ClearHost task is cancelled (``tasks cancel``);
- ``cancel-child``: one child MigrateVm still in flight is cancelled;
- ``stop-worker``: the worker is shut down (``Worker.shutdown``, as on SIGTERM) and, after a
  pause, a new one is started;
- ``terminate-clear``: the ClearHost task is terminated from outside;
- ``kill-destination`` (hosts that can die only: the lab's, ``--lab``): the hypervisor (libvirtd)
  of a migration's destination is killed with SIGKILL, and started again once the tasks ended;
- ``kill-worker`` (a worker process only, ``--lab``): the worker process is killed with SIGKILL
  and, after a pause, a new one is started; it takes the tasks over.

``--lab`` runs on a lab of its own (``lab.control``: real libvirtd hosts, QEMU TCG guests, live
migrations slowed by a bandwidth cap instead of the slowed migrate activity) with a worker
process (``python -P -m worker``, ``bench.fault_process``); migrations in flight are followed
from libvirt (``bench.fault_lab``). Its kinds default to ``LAB_FAULT_KINDS``; every kind works
there. ``tests/test_lab_fault_runs.py`` is its quick mode in the suite.

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
import functools
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.fault_hosts import RunHosts, TestDriverHosts
from bench.fault_lab import LAB_SHAPE, LabHosts, follow_migrations
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
from bench.fault_process import WorkerProcess
from bench.fault_rig import FaultRig
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
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
    "run_kind",
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


async def run_kind(rig: FaultRig, kind: str, kinds: Sequence[str], runs: int, seed: int
                   ) -> Report:
    """``runs`` runs of ``kind`` alone, with indexes of its own (so every kind of ``kinds``
    gets plans of its own): from ``kinds.index(kind) * 1002``, a multiple of 3, so its first
    runs strike before a move, then after one, then anywhere (``plan_run``)."""
    return await run_faults(rig, runs, seed, [kind], start=kinds.index(kind) * 1002)


# --- python -m bench.faults ------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100, help="runs (100)")
    p.add_argument("--seed", type=int, default=None, help="seed of the run plans (random)")
    p.add_argument("--start", type=int, default=0, help="index of the first run (0)")
    p.add_argument("--lab", action="store_true",
                   help="run on a lab of real libvirtd hosts with a worker process")
    lab_only = ",".join(HOST_FAULT_KINDS + PROCESS_FAULT_KINDS)
    p.add_argument("--kinds", default=None,
                   help=f"fault kinds, taken in turn ({','.join(FAULT_KINDS)}; with --lab "
                        f"{','.join(LAB_FAULT_KINDS)}; {lab_only} only with --lab)")
    p.add_argument("--vms", type=int, default=None,
                   help=f"VMs per run ({Shape.vms}; with --lab {LAB_SHAPE.vms})")
    p.add_argument("--hosts", type=int, default=None,
                   help=f"hosts per run, one the source ({Shape.hosts}; with --lab, the lab's: "
                        f"{LAB_SHAPE.hosts})")
    p.add_argument("--parallel", type=int, default=None,
                   help=f"moves in flight ({Shape.parallel})")
    p.add_argument("--move-seconds", type=float, default=None,
                   help=f"how long each migration takes ({Shape.move_seconds}; not with --lab, "
                        f"whose moves a bandwidth cap of {LAB_SHAPE.bandwidth_mib_s} MiB/s "
                        "slows)")
    p.add_argument("--evidence", type=Path, default=Path(".taskomatic/fault-evidence"),
                   help="where the histories of stuck tasks are saved, for a Replayer "
                        "(.taskomatic/fault-evidence)")
    p.add_argument("--pg-url", default=None, help="PostgreSQL server URL (default: local or "
                   "embedded); a fresh database is created and dropped")
    args = p.parse_args(argv)
    known = ALL_FAULT_KINDS if args.lab else FAULT_KINDS
    kinds = args.kinds or ",".join(LAB_FAULT_KINDS if args.lab else FAULT_KINDS)
    args.kinds = [k for k in kinds.split(",") if k]
    unknown = sorted(set(args.kinds) - set(known))
    if unknown or not args.kinds:
        p.error(f"--kinds: unknown {unknown}; choose among {', '.join(known)}")
    base = LAB_SHAPE if args.lab else Shape()
    if args.lab and args.move_seconds is not None:
        p.error("--move-seconds: not with --lab (its live migrations are slowed by bandwidth)")
    args.shape = replace(base, **{k: v for k, v in (
        ("vms", args.vms), ("hosts", args.hosts), ("parallel", args.parallel),
        ("move_seconds", args.move_seconds)) if v is not None})
    shape = args.shape
    if min(args.runs, shape.vms, shape.parallel, shape.hosts - 1) < 1:
        p.error("--runs, --vms and --parallel must be >= 1, --hosts >= 2")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


async def _main(args: argparse.Namespace) -> Report:
    from bench.probe import ActivityProbe  # the private stack's pieces, only for the CLI
    from bench.stack import fresh_database, postgres_server, temporal_dev_server
    from taskomatic.inventory.db import get_database
    from taskomatic.logs import configure_logging

    shape: Shape = args.shape
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
        extra: dict[str, Any] = {}
        if args.lab:
            hosts: RunHosts = _private_lab(stack, tmp, db, hv, db_url, shape)
            extra = {"make_worker": lambda s: WorkerProcess(s, tmp / "worker.log"),
                     "follow": functools.partial(follow_migrations, hv, db)}
        else:
            hosts = TestDriverHosts(db, hv, tmp / "hosts", shape.hosts, room=shape.vms)
        rig = await stack.enter_async_context(FaultRig(
            env.client, settings, db, hv, hosts, shape, evidence_dir=args.evidence.resolve(),
            **extra))
        print(f"fault runs: seed {args.seed}, {args.runs} runs from {args.start}, kinds "
              f"{','.join(args.kinds)}", file=sys.stderr, flush=True)
        return await run_faults(rig, args.runs, args.seed, args.kinds, args.start,
                                log=lambda text: print(text, file=sys.stderr, flush=True))


def _private_lab(stack: AsyncExitStack, tmp: Path, db: Database, hv: Hypervisors,
                 db_url: str, shape: Shape) -> LabHosts:
    """A lab of ``shape.hosts`` hosts for the runs, registered in ``db_url``'s inventory, with
    room for every VM of a run on each; taken down when ``stack`` closes (and, being tied to
    this thread, if the process dies)."""
    from lab.control import lab_down, lab_up  # the lab, only for --lab

    lab_dir = tmp / "lab"
    report = lab_up(lab_dir, shape.hosts, vcpus=max(16, 2 * shape.vms),
                    memory_mib=max(4096, shape.vms * max(shape.memory_mib)),
                    database_url=db_url, tied=True)
    assert report.state is not None
    stack.callback(lab_down, lab_dir, database_url=db_url)
    for host in report.state.hosts:
        stack.callback(hv.forget, host.uri)
    return LabHosts(db, hv, report.state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = asyncio.run(_main(args))
    print(report.summary(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
