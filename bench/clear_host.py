"""``python -m bench clear-host``: clearing a host of many VMs against the ideal schedule.

Same private stack as the lifecycle bench (dev server on a SQLite file, fresh PostgreSQL database,
one in-process worker built by ``build_worker``), on libvirt test-driver hosts (cold moves) or,
with ``--lab``, on a private lab of real libvirtd hosts with SeaBIOS QEMU guests (live moves;
root). First a few VMs are migrated one at a time (``MigrateVm``) to measure a single
migration, end to end, in this run; then one ``ClearHost`` moves N VMs off the source. The
ideal makespan is Σ single-migration time ÷ allowed parallelism, where the allowed parallelism
is the tightest of the limits that apply to one source host: the task's ``parallel``, the
outgoing slots per host, the incoming slots per host times destinations and the cluster's slots.
The ratio makespan / ideal is printed, with the event count of the largest workflow history
(every ClearHost run and every child).
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
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

from rich.console import Console
from temporalio.client import Client

from bench.clear_gaps import migrate_steps, slot_use
from bench.lifecycle import add_hosts, leftovers
from bench.probe import ActivityProbe
from bench.stack import (
    bench_worker,
    fresh_database,
    machine,
    postgres_server,
    temporal_dev_server,
    versions,
)
from lab.control import lab_down, lab_up
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory.db import Database, get_database
from taskomatic.logs import configure_logging
from taskomatic.models import (
    ClearHostRequest,
    DomainSpec,
    HostSpec,
    MigrateVmRequest,
    RecordVmInput,
    VmState,
)
from taskomatic.settings import Settings
from worker import build_ordering_worker

VM_MEMORY_MIB = 64


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench clear-host", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small run (the suite's smoke test): 16 VMs, 2 singles, 8 VMs per "
                        "ClearHost run (so continue-as-new happens)")
    p.add_argument("--lab", action="store_true",
                   help="real libvirtd hosts and QEMU guests (a private lab; needs root)")
    p.add_argument("--vms", type=int, default=None,
                   help="VMs on the host to clear (500; 16 with --lab)")
    p.add_argument("--singles", type=int, default=None,
                   help="VMs migrated one at a time first, to time one migration (10; 4 with "
                        "--lab)")
    p.add_argument("--destinations", type=int, default=4, help="hosts that receive them (4)")
    p.add_argument("--parallel", type=int, default=None,
                   help="migrations in flight (default: the settings' cluster limit)")
    p.add_argument("--batch", type=int, default=None,
                   help="VMs per ClearHost run before continue-as-new (default: settings)")
    p.add_argument("--pg-url", default=None, help="PostgreSQL server URL (default: local or "
                   "embedded); a fresh database is created and dropped")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="warning")
    args = p.parse_args(argv)
    args.vms = args.vms or (16 if args.lab or args.quick else 500)
    args.singles = args.singles or (2 if args.quick else 4 if args.lab else 10)
    args.batch = args.batch or (8 if args.quick else None)
    if min(args.vms, args.singles, args.destinations, args.parallel or 1, args.batch or 1) < 1:
        p.error("--vms, --singles, --destinations, --parallel and --batch must be >= 1")
    return args


def populate(db: Database, hv: Hypervisors, host: HostSpec, names: list[str]) -> None:
    """Define, start and record VMs on ``host`` directly (set-up, not measured)."""
    conn = hv.connection(host.uri)
    for name in names:
        spec = DomainSpec(host=host.name, uri=host.uri, name=name, uuid=str(uuid.uuid4()),
                          vcpus=1, memory_mib=VM_MEMORY_MIB)
        conn.defineXML(build_domain_xml(spec)).create()
        inventory.record_vm(db, RecordVmInput(task_id=f"bench-setup-{name}", name=name,
                                              uuid=spec.uuid, host=host.name, vcpus=1,
                                              memory_mib=VM_MEMORY_MIB, state=VmState.RUNNING))


def bench_hosts(stack: AsyncExitStack, args: argparse.Namespace, tmp: Path, db: Database,
                db_url: str, hv: Hypervisors, prefix: str, room: int
                ) -> tuple[HostSpec, list[HostSpec]]:
    """The source host and the destinations, each with room for ``room`` VMs: test-driver
    hosts, or with ``--lab`` a private lab taken down (nothing left) when ``stack`` closes."""
    if not args.lab:
        source = add_hosts(db, hv, tmp / "src", f"{prefix}src", 1, vcpus=room,
                           memory_mib=room * VM_MEMORY_MIB)[0]
        return source, add_hosts(db, hv, tmp / "dst", prefix, args.destinations, vcpus=room,
                                 memory_mib=room * VM_MEMORY_MIB)
    report = lab_up(tmp / "lab", args.destinations + 1, vcpus=room,
                    memory_mib=room * VM_MEMORY_MIB, database_url=db_url, tied=True)
    stack.callback(lab_down, tmp / "lab", database_url=db_url)
    assert report.state is not None
    source, *dests = [HostSpec(name=h.name, uri=h.uri, vcpus=room, memory_mib=room * VM_MEMORY_MIB)
                      for h in report.state.hosts]
    return source, dests


async def history_sizes(client: Client, workflow_id: str) -> list[int]:
    """Event counts of every run of ``workflow_id`` (continue-as-new makes several)."""
    sizes = []
    async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        sizes.append(len(history.events))
    return sizes


async def run(args: argparse.Namespace, out: Console, err: Console) -> dict[str, Any]:
    prefix = uuid.uuid4().hex[:6]
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="taskomatic-bench-clear-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log_file = stack.enter_context((tmp / "taskomatic.log").open("w", encoding="utf-8"))
        configure_logging("json", args.log_level, log_file)
        pg_server, pg_kind = stack.enter_context(postgres_server(args.pg_url, False, tmp / "pg"))
        db_url = stack.enter_context(fresh_database(pg_server, f"taskomatic_bench_{prefix}"))
        env = await stack.enter_async_context(
            temporal_dev_server(tmp / "temporal.sqlite", tmp / "temporal.log", ActivityProbe()))
        db = get_database(db_url)
        total = args.vms + args.singles
        hv = Hypervisors()
        if args.lab:
            err.print(f"starting a lab of {args.destinations + 1} libvirtd hosts ...")
        source, dests = bench_hosts(stack, args, tmp, db, db_url, hv, prefix, total)
        stack.callback(hv.close)  # before a lab goes down
        settings = Settings(temporal_address=env.client.service_client.config.target_host,
                            database_url=db_url, task_queue=f"bench-{prefix}",
                            migration_save_dir=tmp / "saves", _env_file=None)
        parallel = args.parallel or settings.migrations_in_cluster
        allowed = min(parallel, settings.migrations_out_per_host,
                      settings.migrations_in_per_host * args.destinations,
                      settings.migrations_in_cluster)
        batch = args.batch or settings.clear_host_batch
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=settings.activity_threads))
        await stack.enter_async_context(await bench_worker(env.client, settings, hv, executor))
        await stack.enter_async_context(build_ordering_worker(env.client, settings))
        tk = TaskomaticClient(env.client, settings, db)

        names = [f"bench-{prefix}-vm{i}" for i in range(total)]
        err.print(f"set-up: {total} running VMs on {source.name}")
        populate(db, hv, source, names)

        err.print(f"timing {args.singles} single migrations, one at a time ...")
        singles, single_ids = [], []
        for name in names[:args.singles]:
            t0 = perf_counter()
            handle = await tk.migrate_vm(MigrateVmRequest(name=name))
            await handle.result()
            singles.append(perf_counter() - t0)
            single_ids.append(handle.id)
        single = statistics.mean(singles)

        err.print(f"clearing {source.name}: {args.vms} VMs, {parallel} in flight, "
                  f"{batch} per run ...")
        began, t0 = datetime.now(UTC), perf_counter()
        clear = await tk.clear_host(ClearHostRequest(host=source.name, parallel=parallel,
                                                     batch=batch))
        result = await tk.host_result(clear)
        makespan, ended = perf_counter() - t0, datetime.now(UTC)
        ideal = args.vms * single / allowed

        runs = await history_sizes(env.client, clear.id)
        children = [f"{clear.id}-migrate-{n}" for n in names[args.singles:]]
        use = slot_use(await migrate_steps(env.client, children), allowed, began, ended)
        single_steps = await migrate_steps(env.client, single_ids)
        single_step = statistics.mean(e - s for s, e in single_steps) if single_steps else 0.0
        child_sizes = [len((await env.client.get_workflow_handle(c).fetch_history()).events)
                       for c in children[:: max(1, len(children) // 20)]]
        problems = [f"{o.vm}: {o.outcome} {o.reason}" for o in result.outcomes
                    if o.outcome != "moved"][:10]
        if len(result.outcomes) != args.vms:
            problems.append(f"{len(result.outcomes)} outcomes for {args.vms} VMs")
        if hv.connection(source.uri).listAllDomains() or inventory.list_vms(db, source.name):
            problems.append(f"{source.name} is not empty")
        on_dests = sum(len(hv.connection(d.uri).listAllDomains()) for d in dests)
        if on_dests != total:
            problems.append(f"{on_dests} domains on the destinations, expected {total}")
        problems += [x for x in leftovers(db, hv, [source, *dests])
                     if x.startswith("reservation")][:10]
        record: dict[str, Any] = {
            "bench": "taskomatic-clear-host",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(db_url),
            "config": {"vms": args.vms, "singles": args.singles, "destinations":
                       args.destinations, "parallel": parallel, "batch": batch,
                       "allowed_parallelism": allowed, "postgres": pg_kind,
                       "driver": ("lab: libvirtd + QEMU TCG SeaBIOS guests (live moves)"
                                  if args.lab else "libvirt test driver (cold moves)")},
            "single_migration_s": {"mean": round(single, 4),
                                   "p50": round(statistics.median(singles), 4),
                                   "max": round(max(singles), 4)},
            "makespan_s": round(makespan, 2), "ideal_s": round(ideal, 2),
            "ratio": round(makespan / ideal, 3),
            "single_migrate_step_s": round(single_step, 4), "slots": use,
            "final_state": result.state, "clear_host_runs": len(runs),
            "history_events": {"largest": max([*runs, *child_sizes]),
                               "clear_host_runs": runs, "largest_child": max(child_sizes)},
            "ok": not problems, "problems": problems,
        }
        out.print(f"single migration (MigrateVm end to end): mean {single * 1000:.0f} ms "
                  f"over {len(singles)}")
        out.print(f"clear-host of {args.vms} VMs: makespan {makespan:.1f} s, ideal "
                  f"{ideal:.1f} s (Σ single ÷ {allowed}), ratio [bold]{makespan / ideal:.2f}"
                  f"[/], {len(runs)} runs")
        out.print(f"migrate step: {single_step * 1000:.0f} ms alone, "
                  f"{use.get('migrate_step_s', 0) * 1000:.0f} ms in the clear; slots busy "
                  f"{use.get('slot_busy', 0):.0%} (under-filled {use.get('under_filled_s')} s), "
                  f"hand-over p50 {use.get('handover_ms_p50')} ms / p90 "
                  f"{use.get('handover_ms_p90')} ms over {use.get('handovers')}, lead "
                  f"{use.get('lead_s')} s, tail {use.get('tail_s')} s")
        out.print(f"largest workflow history: {record['history_events']['largest']} events "
                  f"(ClearHost runs {runs}, children ≤ {max(child_sizes)})")
        for problem in problems:
            out.print(f"[red]problem:[/] {problem}")
        err.print("cleaning up ...")
    return record


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out, err = Console(), Console(stderr=True)
    record = asyncio.run(run(args, out, err))
    print(json.dumps(record, separators=(",", ":"), default=str), flush=True)
    return 0 if record["ok"] else 1
