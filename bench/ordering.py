"""``python -m bench.ordering``: what per-resource ordering costs, against the same tasks unordered.

Same stack as ``python -m bench`` (dev server on a SQLite file, fresh PostgreSQL database,
taskomatic's worker and ordering worker in-process, test-driver hosts). Two measurements, each
side alternating (ABBA) so drift hits both alike:

- **free resource**: one StartVm/StopVm at a time on an idle VM: the latency ordering adds when
  nobody else wants the resource (a claim and a release);
- **contended**: 200 tasks over 20 VMs (start, stop, start, ... per VM), all submitted at once:
  makespan and throughput. Ordered, each VM's tasks run one at a time in submission order;
  unordered (``ordered=False``), they race, which is exactly what ordering exists to prevent,
  so the unordered side is a speed reference, not a correct alternative.

Checked on every run (exit status 1 and ``"ok": false`` otherwise): no ordered task fails; after
each ordered contended run every VM is in the power state its last task asked for, as libvirt
says; no claim is left once all tasks have ended. ``--quick`` is a small run (the suite's smoke
test); the last line is one JSON record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from time import perf_counter
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from bench.lifecycle import add_hosts
from bench.probe import ActivityProbe
from bench.stack import fresh_database, machine, postgres_server, temporal_dev_server
from starter.client import TaskError, TaskomaticClient
from taskomatic.hypervisor import Hypervisors, power_state
from taskomatic.inventory import ordering
from taskomatic.inventory.db import get_database
from taskomatic.logs import configure_logging
from taskomatic.models import (
    CreateVmRequest,
    HostSpec,
    StartVmRequest,
    StopVmRequest,
    TaskRequest,
    VmState,
)
from taskomatic.settings import Settings
from worker import build_ordering_worker, build_worker


def _request(vm: str, i: int, ordered: bool) -> tuple[str, TaskRequest]:
    if i % 2 == 0:
        return "StartVm", StartVmRequest(name=vm, ordered=ordered)
    return "StopVm", StopVmRequest(name=vm, force=True, ordered=ordered)


async def _one(tk: TaskomaticClient, kind: str, req: TaskRequest) -> tuple[float, bool]:
    t0 = perf_counter()
    try:
        await (await tk.submit(kind, req)).result()
        return perf_counter() - t0, True
    except TaskError:
        return perf_counter() - t0, False


async def free_latency(tk: TaskomaticClient, vm: str, n: int, ordered: bool) -> list[float]:
    return [(await _one(tk, *_request(vm, i, ordered)))[0] for i in range(n)]


def _states(hv: Hypervisors, where: dict[str, HostSpec]) -> dict[str, VmState]:
    return {vm: power_state(hv.connection(host.uri).lookupByName(vm))
            for vm, host in where.items()}


def _last_asked(per_vm: int) -> VmState:
    """The power state the last of a VM's ``per_vm`` tasks asks for (``_request``'s order)."""
    return VmState.RUNNING if (per_vm - 1) % 2 == 0 else VmState.SHUTOFF


async def contended(tk: TaskomaticClient, vms: list[str], per_vm: int, ordered: bool
                    ) -> dict[str, Any]:
    plan = [_request(vms[i % len(vms)], i // len(vms), ordered)
            for i in range(per_vm * len(vms))]
    t0 = perf_counter()
    handles = [await tk.submit(kind, req) for kind, req in plan]
    outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
    wall = perf_counter() - t0
    failed = sum(isinstance(o, BaseException) for o in outcomes)
    return {"tasks": len(plan), "wall_s": wall, "tasks_per_s": len(plan) / wall,
            "failed": failed}


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def run(args: argparse.Namespace, out: Console) -> dict[str, Any]:
    prefix = uuid.uuid4().hex[:6]
    problems: list[str] = []
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="taskomatic-bench-ordering-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log_file = stack.enter_context((tmp / "taskomatic.log").open("w", encoding="utf-8"))
        configure_logging("json", "warning", log_file)
        pg_server, pg_kind = stack.enter_context(postgres_server(args.pg_url, args.embedded_pg,
                                                                 tmp / "pg"))
        db_url = stack.enter_context(fresh_database(pg_server, f"taskomatic_bench_{prefix}"))
        env = await stack.enter_async_context(
            temporal_dev_server(tmp / "temporal.sqlite", tmp / "temporal.log", ActivityProbe()))
        hypervisors = Hypervisors()
        stack.callback(hypervisors.close)
        db = get_database(db_url)
        hosts = add_hosts(db, hypervisors, tmp / "hosts", prefix, 4, vcpus=256,
                          memory_mib=256 * 1024)
        settings = Settings(temporal_address=env.client.service_client.config.target_host,
                            database_url=db_url, task_queue=f"bench-{prefix}", _env_file=None)
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=settings.activity_threads))
        await stack.enter_async_context(build_worker(env.client, settings, hypervisors,
                                                     executor))
        await stack.enter_async_context(build_ordering_worker(env.client, settings))
        tk = TaskomaticClient(env.client, settings, db)
        vms = [f"o{prefix}-{i}" for i in range(args.vms)]
        where = {vm: hosts[i % len(hosts)] for i, vm in enumerate(vms)}
        await asyncio.gather(*[
            (await tk.create_vm(CreateVmRequest(name=vm, memory_mib=64,
                                                host=hosts[i % len(hosts)].name))).result()
            for i, vm in enumerate(vms)])

        await free_latency(tk, vms[0], 4, True)  # warm-up, not counted
        await free_latency(tk, vms[0], 4, False)
        lat: dict[bool, list[float]] = {True: [], False: []}
        load: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for rnd in range(args.rounds):
            for ordered in ((True, False) if rnd % 2 == 0 else (False, True)):
                lat[ordered] += await free_latency(tk, vms[0], args.free // args.rounds, ordered)
                load[ordered].append(await contended(tk, vms, args.per_vm, ordered))
                if ordered:
                    wrong = {vm: st for vm, st in _states(hypervisors, where).items()
                             if st != _last_asked(args.per_vm)}
                    problems += [f"round {rnd + 1}, ordered: {vm} is {st.value}, its last "
                                 f"task asked for {_last_asked(args.per_vm).value}"
                                 for vm, st in sorted(wrong.items())][:10]
        problems += [f"claim left: {c.task_id} on {c.resource}" for c in ordering.queue(db)][:10]

    def side(ordered: bool) -> dict[str, Any]:
        runs = load[ordered]
        wall = sum(r["wall_s"] for r in runs)
        tasks = sum(r["tasks"] for r in runs)
        return {"free_p50_ms": 1000 * statistics.median(lat[ordered]),
                "free_p95_ms": 1000 * _p(lat[ordered], 95),
                "contended_tasks_per_s": tasks / wall, "contended_wall_s": wall / len(runs),
                "failed": sum(r["failed"] for r in runs)}

    on, off = side(True), side(False)
    if on["failed"]:
        problems.append(f"{on['failed']} ordered tasks failed")
    result: dict[str, Any] = {
        "bench": "taskomatic-ordering", "machine": machine(), "postgres": pg_kind,
        "config": {"vms": args.vms, "tasks_per_vm": args.per_vm, "rounds": args.rounds,
                   "free_samples": args.free},
        "ordered": on, "unordered": off,
        "ratios": {"free_latency_p50": on["free_p50_ms"] / off["free_p50_ms"],
                   "contended_throughput": on["contended_tasks_per_s"]
                   / off["contended_tasks_per_s"]},
        "ok": not problems, "problems": problems,
    }
    table = Table("", "ordered", "unordered", "ordered / unordered",
                  title=f"Ordering: {args.vms * args.per_vm} tasks over {args.vms} VMs, "
                        f"{args.rounds} rounds (ABBA)")
    table.add_row("free resource: latency p50 (ms)", f"{on['free_p50_ms']:.1f}",
                  f"{off['free_p50_ms']:.1f}", f"{result['ratios']['free_latency_p50']:.2f}x")
    table.add_row("free resource: latency p95 (ms)", f"{on['free_p95_ms']:.1f}",
                  f"{off['free_p95_ms']:.1f}", f"{on['free_p95_ms'] / off['free_p95_ms']:.2f}x")
    table.add_row("contended: tasks/s", f"{on['contended_tasks_per_s']:.1f}",
                  f"{off['contended_tasks_per_s']:.1f}",
                  f"{result['ratios']['contended_throughput']:.2f}x")
    table.add_row("contended: makespan per run (s)", f"{on['contended_wall_s']:.2f}",
                  f"{off['contended_wall_s']:.2f}",
                  f"{on['contended_wall_s'] / off['contended_wall_s']:.2f}x")
    table.add_row("failed tasks", str(on["failed"]), str(off["failed"]), "")
    out.print(table)
    for problem in problems:
        out.print(f"[red]problem:[/] {problem}", highlight=False)
    return result


def main(argv: list[str] | None = None) -> NoReturn:
    p = argparse.ArgumentParser(prog="python -m bench.ordering", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small run: 4 VMs x 4 tasks, 1 round, 4 free-resource samples")
    p.add_argument("--vms", type=int, default=None, help="VMs (default 20)")
    p.add_argument("--per-vm", type=int, default=None,
                   help="tasks per VM in the contended run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="ABBA rounds (default 2)")
    p.add_argument("--free", type=int, default=None,
                   help="free-resource samples per side (default 40)")
    p.add_argument("--pg-url", default=os.environ.get("TASKOMATIC_BENCH_PG_URL"),
                   help="PostgreSQL server URL (default: local 127.0.0.1:5432 if it answers, "
                        "else an embedded server); a fresh database is created and dropped")
    p.add_argument("--embedded-pg", action="store_true", help="always use an embedded server")
    args = p.parse_args(argv)
    for name, full, quick in (("vms", 20, 4), ("per_vm", 10, 4), ("rounds", 2, 1),
                              ("free", 40, 4)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.vms, args.per_vm, args.rounds) < 1 or args.free < args.rounds:
        p.error("--vms, --per-vm, --rounds must be >= 1 and --free >= --rounds")
    code = 1
    try:
        result = asyncio.run(run(args, Console()))
        print(json.dumps(result, separators=(",", ":")), flush=True)
        code = 0 if result["ok"] else 1
    except Exception:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown (shared/notes: PyGILState_Release at exit)


if __name__ == "__main__":
    main()
