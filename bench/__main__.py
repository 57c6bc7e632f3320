"""``python -m bench``: taskomatic VM-lifecycle throughput against a bare Temporal baseline.

One Temporal dev server (SQLite file in a temp dir, WAL), one fresh PostgreSQL database, one
in-process worker (``build_worker``'s) serving both sides. Each side gets a warm-up (not counted),
a few chains run one at a time (unloaded latency), then its N VM chains at bounded concurrency,
in alternating rounds (ABBA...) so that drift and other load on the machine hit both sides alike.
Prints rich tables and, last, one JSON line for the record. Everything is torn down at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from bench.baseline_driver import baseline_chain
from bench.lifecycle import ChainSteps, add_hosts, leftovers, lifecycle_chain
from bench.probe import (
    ActivityProbe,
    CpuSampler,
    DbCounters,
    child_pids,
    db_counters,
    sub_dict,
    thread_cpu,
)
from bench.report import Phase, overhead, ratio, render
from bench.runner import Chain, Recorder, run_chains
from bench.stack import (
    DEV_SERVER_ARGS,
    bench_worker,
    fresh_database,
    machine,
    postgres_server,
    postmaster_pid,
    temporal_dev_server,
    versions,
    worker_settings,
)
from starter.client import TaskomaticClient
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import get_database, with_dbname
from taskomatic.logs import configure_logging
from taskomatic.settings import Settings
from worker import build_ordering_worker
from workflows.ordering import ordering_queue

DEFAULT_VMS = 200
QUICK_VMS = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=None,
                   help=f"VM lifecycles per side (default {DEFAULT_VMS}; {QUICK_VMS} with --quick)")
    p.add_argument("--quick", action="store_true", help=f"small run: {QUICK_VMS} VMs per side")
    p.add_argument("--concurrency", type=int, default=50, help="VM chains in flight (default 50)")
    p.add_argument("--hosts", type=int, default=4, help="test-driver hosts (default 4)")
    p.add_argument("--warmup", type=int, default=5,
                   help="VM chains per side run first and not counted (default 5); "
                        "taskomatic's tell which activities a chain runs, which the baseline "
                        "then mirrors and the measured phases are checked against")
    p.add_argument("--unloaded", type=int, default=10,
                   help="VM chains per side run one at a time for unloaded latency (default 10)")
    p.add_argument("--rounds", type=int, default=None,
                   help="split each side's VMs into this many alternating runs (ABBA...) so "
                        "that drift and other load on the machine hit both sides alike "
                        "(default 2; 1 with --quick)")
    p.add_argument("--order", choices=("baseline-first", "taskomatic-first"),
                   default="baseline-first", help="which side runs first in round 1")
    p.add_argument("--pg-url", default=os.environ.get("TASKOMATIC_BENCH_PG_URL"),
                   help="PostgreSQL server URL (default: local 127.0.0.1:5432 if it answers, "
                        "else an embedded server); a fresh database is created and dropped")
    p.add_argument("--embedded-pg", action="store_true", help="always use an embedded server")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="taskomatic's log level; logs go to a file in the run's temp dir")
    p.add_argument("--pollers", type=int, default=None,
                   help="experiment: workflow and activity task pollers for both sides instead "
                        "of build_worker's (the SDK's default, 5)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of quiet after each phase, inside its CPU window (default 1)")
    args = p.parse_args(argv)
    if args.vms is None:
        args.vms = QUICK_VMS if args.quick else DEFAULT_VMS
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if min(args.vms, args.concurrency, args.hosts, args.rounds, args.pollers or 1) < 1:
        p.error("--vms, --concurrency, --hosts and --rounds must be >= 1")
    if args.warmup < 1 or args.unloaded < 0 or args.rounds > args.vms:
        p.error("--warmup must be >= 1, --unloaded >= 0, --rounds <= --vms")
    return args


@dataclass
class Instruments:
    probe: ActivityProbe
    cpu: CpuSampler
    pg_admin_url: str
    db_name: str

    def db(self) -> DbCounters:
        return db_counters(self.pg_admin_url, self.db_name)


async def measure(phase: Phase, vms: int, concurrency: int, chain: Chain, inst: Instruments,
                  settle_s: float) -> None:
    """Run ``vms`` chains and add what they did to ``phase``; the CPU and database windows
    include ``settle_s`` of quiet after the last task, for the work that trails it."""
    acts0, cpu0, db0, th0 = inst.probe.totals(), inst.cpu.snapshot(), inst.db(), thread_cpu()
    rec = Recorder()
    wall = await run_chains(vms, concurrency, chain, rec)
    await asyncio.sleep(settle_s)
    cpu, threads = inst.cpu.snapshot() - cpu0, sub_dict(thread_cpu(), th0)
    phase.add(vms, wall, rec, inst.probe.totals() - acts0, cpu, inst.db() - db0, threads)


def chunks(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def check_counts(phase: Phase, expected: Counter[tuple[str, str]]) -> list[str]:
    got = +phase.acts.count
    if got == expected:
        return []
    diff = {f"{k[0]}.{k[1]}": (got.get(k, 0), expected.get(k, 0))
            for k in sorted(set(got) | set(expected)) if got.get(k, 0) != expected.get(k, 0)}
    return [f"{phase.side}: activity executions (got, expected) differ: {diff}"]


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    prefix = uuid.uuid4().hex[:6]
    problems: list[str] = []
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="taskomatic-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log_path = tmp / "taskomatic.log"
        log_file = stack.enter_context(log_path.open("w", encoding="utf-8"))
        configure_logging("json", args.log_level, log_file)

        pg_server, pg_kind = stack.enter_context(
            postgres_server(args.pg_url, args.embedded_pg, tmp / "pg"))
        db_name = f"taskomatic_bench_{prefix}"
        db_url = stack.enter_context(fresh_database(pg_server, db_name))
        err.print(f"PostgreSQL: {pg_kind} server, fresh database {db_name}")

        probe = ActivityProbe()
        env = await stack.enter_async_context(
            temporal_dev_server(tmp / "temporal.sqlite", tmp / "temporal.log", probe))
        server_pids = child_pids("temporal")
        if not server_pids:
            problems.append("dev server process not found: its CPU is not counted")
        pg_pid = postmaster_pid(db_url)
        inst = Instruments(probe, CpuSampler(server_pids, pg_pid),
                           with_dbname(pg_server, "postgres"), db_name)

        hypervisors = Hypervisors()
        stack.callback(hypervisors.close)
        db = get_database(db_url)
        hosts = add_hosts(db, hypervisors, tmp / "hosts", prefix, args.hosts, vcpus=256,
                          memory_mib=256 * 1024)
        settings = Settings(temporal_address=env.client.service_client.config.target_host,
                            database_url=db_url, task_queue=f"bench-{prefix}",
                            _env_file=None)
        executor = stack.enter_context(ThreadPoolExecutor(
            max_workers=settings.activity_threads, thread_name_prefix="activity"))
        worker = await bench_worker(env.client, settings, hypervisors, executor, args.pollers)
        await stack.enter_async_context(worker)
        await stack.enter_async_context(build_ordering_worker(env.client, settings))
        tk = TaskomaticClient(env.client, settings, db)

        # The warm-up's taskomatic chains tell what a chain runs (ChainSteps); the baseline
        # runs as many hypervisor and inventory steps per task, and every measured phase is
        # checked against it.
        err.print(f"warm-up: {args.warmup} VM chains per side (not counted)")
        acts0, warm = probe.totals(), Recorder()
        await run_chains(args.warmup, args.warmup, lifecycle_chain(tk, f"{prefix}w"), warm)
        steps, found = ChainSteps.derive((probe.totals() - acts0).count, args.warmup,
                                         probe.queues(), ordering_queue(settings.task_queue))
        problems += [f"warm-up taskomatic: {f}" for f in warm.failures] + found
        if problems:
            raise RuntimeError("; ".join(problems))
        for kind, acts in steps.describe().items():
            err.print(f"  {kind}: {', '.join(acts)}", highlight=False)
        chains = {
            "taskomatic": lambda tag: lifecycle_chain(tk, f"{prefix}{tag}"),
            "baseline": lambda tag: baseline_chain(env.client, settings.task_queue,
                                                   f"{prefix}{tag}", steps.baseline()),
        }
        order = ["baseline", "taskomatic"]
        if args.order == "taskomatic-first":
            order.reverse()
        warm = Recorder()
        await run_chains(args.warmup, args.warmup, chains["baseline"]("w"), warm)
        problems += [f"warm-up baseline: {f}" for f in warm.failures]

        unloaded = {side: Phase(side) for side in order}
        if args.unloaded:
            err.print(f"unloaded latency: {args.unloaded} VM chains per side, one at a time")
            for side in order:
                await measure(unloaded[side], args.unloaded, 1, chains[side]("u"), inst, 0.2)
                problems += [f"unloaded {side}: {f}" for f in unloaded[side].rec.failures]

        phases = {side: Phase(side) for side in order}
        for rnd_no, vms in enumerate(chunks(args.vms, args.rounds)):
            for side in (order if rnd_no % 2 == 0 else order[::-1]):
                phase = phases[side]
                err.print(f"round {rnd_no + 1}/{args.rounds}, {side}: {vms} VM chains, "
                          f"{min(args.concurrency, vms)} in flight ...")
                before = len(phase.rec.samples)
                await measure(phase, vms, args.concurrency, chains[side](f"m{rnd_no}"), inst,
                              args.settle)
                err.print(f"  {len(phase.rec.samples) - before} tasks")
        for side, phase in phases.items():
            problems += [f"{side}: {f}" for f in phase.rec.failures[:10]]

        tk_phase, bl_phase = phases["taskomatic"], phases["baseline"]
        if not tk_phase.rec.failures:
            problems += check_counts(tk_phase, steps.expected(args.vms))
        if not bl_phase.rec.failures:
            per_vm = sum(n for _, n in steps.baseline())
            problems += check_counts(
                bl_phase, Counter({("BenchBaseline", "bench_noop"): args.vms * per_vm}))
        problems += [f"left behind: {x}" for x in leftovers(db, hypervisors, hosts)[:10]]

        info = {"machine": machine(), "versions": versions(db_url)}
        config: dict[str, Any] = {
            "vms": args.vms, "concurrency": args.concurrency, "hosts": args.hosts,
            "rounds": args.rounds, "warmup_vms": args.warmup, "unloaded_vms": args.unloaded,
            "order": args.order, "postgres": pg_kind, "postgres_cpu_seen": pg_pid is not None,
            "temporal_db": "sqlite file (on disk, temp dir)",
            "dev_server_args": list(DEV_SERVER_ARGS),
            "worker": worker_settings(worker), "pollers_override": args.pollers,
            "log_level": args.log_level,
            "steps": steps.describe(), "baseline_steps": dict(steps.baseline()),
        }
        tk_sum = tk_phase.summary(unloaded["taskomatic"])
        bl_sum = bl_phase.summary(unloaded["baseline"])
        over = overhead(tk_sum, bl_sum)
        m, v = info["machine"], info["versions"]
        ws = config["worker"]
        head = [
            f"taskomatic VM lifecycle vs bare Temporal: {args.vms} VMs per side x 3 tasks, "
            f"<= {args.concurrency} VMs in flight, {args.hosts} test hosts, {args.rounds} "
            f"round(s)",
            f"machine: nproc {m['nproc']} ({m['cpu']}), {m['platform']}",
            f"versions: Python {v['python']}, temporalio {v['temporalio']}, temporal CLI "
            f"{v['temporal_cli']}, libvirt {v['libvirt']} (python {v['libvirt_python']}), "
            f"psycopg2 {v['psycopg2']}, pydantic {v['pydantic']}, PostgreSQL {v['postgresql']} "
            f"({pg_kind}), taskomatic {v['taskomatic_commit']}",
            "server: temporal dev server, SQLite file on disk (WAL, synchronous=normal), "
            "transferProcessorMaxPollRPS=1000",
            "worker: build_worker's settings"
            + (f" but {args.pollers} pollers" if args.pollers else "")
            + ", serving the baseline too; activities "
            f"{ws['max_concurrent_activities']}, workflow tasks "
            f"{ws['max_concurrent_workflow_tasks']}, threads {ws['activity_threads']}, "
            f"pollers wf {ws['workflow_task_poller_behavior']} / act "
            f"{ws['activity_task_poller_behavior']}, {ws['workflow_runner']}",
        ]
        render(out, tk_sum, bl_sum, over, head)
        for problem in problems:
            out.print(f"[red]problem:[/red] {problem}", highlight=False)
        if problems:
            tail = [line for line in log_path.read_text().splitlines()
                    if '"level": "error"' in line or '"level": "warning"' in line][-5:]
            tail += (tmp / "temporal.log").read_text(errors="replace").splitlines()[-5:]
            for line in tail:
                out.print(f"log: {line[:300]}", highlight=False, markup=False)
        record = {
            "bench": "taskomatic-lifecycle-vs-baseline",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            **info, "config": config, "taskomatic": tk_sum, "baseline": bl_sum,
            "ratio_tasks_per_s": ratio(tk_sum["tasks_per_s"], bl_sum["tasks_per_s"]),
            "ratio_latency_p50": ratio(tk_sum["latency_ms"]["p50"], bl_sum["latency_ms"]["p50"]),
            "ratio_cpu_based": over["cpu_based_throughput_ratio"],
            "overhead": over, "ok": not problems, "problems": problems,
        }
        err.print("cleaning up ...")
    out.file.flush()
    print(json.dumps(record, separators=(",", ":")), flush=True)
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clear-host"]:  # the clear-host bench (bench/clear_host.py)
        from bench import clear_host

        try:
            code = clear_host.main(argv[1:])
        except Exception:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    args = parse_args(argv)
    out, err = Console(), Console(stderr=True)

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # asyncio's own default executor (same size), named so its CPU can be told apart: the
        # starter runs its inventory pre-checks there (asyncio.to_thread).
        loop.set_default_executor(ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="starter"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run(args, out, err)

    try:
        code = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted; stack cleaned up")
        code = 130
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter teardown: the SDK's runtime threads can trip over it (see
    # shared/notes: PyGILState_Release at exit).
    os._exit(code)


if __name__ == "__main__":
    main()
