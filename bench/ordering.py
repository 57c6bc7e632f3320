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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from time import perf_counter
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.lifecycle import add_hosts
from bench.probe import ActivityProbe
from bench.stack import fresh_database, machine, postgres_server, temporal_dev_server
from starter.client import TaskError, TaskomaticClient
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import get_database
from taskomatic.logs import configure_logging
from taskomatic.models import CreateVmRequest, StartVmRequest, StopVmRequest, TaskRequest
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
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="taskomatic-bench-ordering-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log_file = stack.enter_context((tmp / "taskomatic.log").open("w", encoding="utf-8"))
        configure_logging("json", "warning", log_file)
        pg_server, pg_kind = stack.enter_context(postgres_server(None, args.embedded_pg,
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

    def side(ordered: bool) -> dict[str, Any]:
        runs = load[ordered]
        wall = sum(r["wall_s"] for r in runs)
        tasks = sum(r["tasks"] for r in runs)
        return {"free_p50_ms": 1000 * statistics.median(lat[ordered]),
                "free_p95_ms": 1000 * _p(lat[ordered], 95),
                "contended_tasks_per_s": tasks / wall, "contended_wall_s": wall / len(runs),
                "failed": sum(r["failed"] for r in runs)}

    on, off = side(True), side(False)
    result = {
        "bench": "taskomatic-ordering", "machine": machine(), "postgres": pg_kind,
        "config": {"vms": args.vms, "tasks_per_vm": args.per_vm, "rounds": args.rounds,
                   "free_samples": args.free},
        "ordered": on, "unordered": off,
        "ratios": {"free_latency_p50": on["free_p50_ms"] / off["free_p50_ms"],
                   "contended_throughput": on["contended_tasks_per_s"]
                   / off["contended_tasks_per_s"]},
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
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ordering", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=20)
    p.add_argument("--per-vm", type=int, default=10, help="tasks per VM in the contended run")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (default 2)")
    p.add_argument("--free", type=int, default=40, help="free-resource samples per side")
    p.add_argument("--embedded-pg", action="store_true")
    args = p.parse_args(argv)
    out = Console()
    result = asyncio.run(run(args, out))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
