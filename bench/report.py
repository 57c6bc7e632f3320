"""Figures of the measured phases, the side-by-side rich tables, and the JSON record."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.probe import ActivityTotals, CpuSnapshot, DbCounters, add_dict
from bench.runner import Recorder


def percentile(values: list[float], pct: int) -> float:
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def rnd(x: float | None, digits: int = 1) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


@dataclass
class Phase:
    """What one side did in one or more measured runs of chains, summed."""

    side: str
    vms: int = 0
    wall_s: float = 0.0
    rec: Recorder = field(default_factory=Recorder)
    acts: ActivityTotals = field(default_factory=ActivityTotals.empty)
    cpu: CpuSnapshot = field(default_factory=lambda: CpuSnapshot(0, 0, 0, 0, 0))
    db: DbCounters = field(default_factory=lambda: DbCounters(0, 0, 0.0))
    threads: dict[str, float] = field(default_factory=dict)

    def add(self, vms: int, wall_s: float, rec: Recorder, acts: ActivityTotals,
            cpu: CpuSnapshot, db: DbCounters, threads: dict[str, float]) -> None:
        self.vms += vms
        self.wall_s += wall_s
        self.rec.samples += rec.samples
        self.rec.failures += rec.failures
        self.acts += acts
        self.cpu += cpu
        self.db += db
        self.threads = add_dict(self.threads, threads)

    def latencies(self, kind: str | None = None) -> list[float]:
        return [s.latency_s * 1000 for s in self.rec.samples if kind in (None, s.kind)]

    def latency(self) -> dict[str, float | None]:
        lat = self.latencies()
        return {"p50": rnd(percentile(lat, 50)), "p95": rnd(percentile(lat, 95)),
                "mean": rnd(statistics.fmean(lat)) if lat else None}

    def summary(self, unloaded: Phase) -> dict[str, Any]:
        tasks = len(self.rec.samples)
        per = 1000 / tasks if tasks else math.nan  # seconds per phase → ms per task
        cpu = self.cpu
        u_tasks = len(unloaded.rec.samples)
        kinds = {kind: {"tasks": len(self.latencies(kind)),
                        "p50_ms": rnd(percentile(self.latencies(kind), 50)),
                        "p95_ms": rnd(percentile(self.latencies(kind), 95)),
                        "unloaded_p50_ms": rnd(percentile(unloaded.latencies(kind), 50))}
                 for kind in dict.fromkeys(s.kind for s in self.rec.samples)}
        acts = {f"{wf}.{act}": {"count": n,
                                "wall_ms": rnd(1000 * self.acts.wall_s[(wf, act)] / n, 2),
                                "cpu_ms": rnd(1000 * self.acts.cpu_s[(wf, act)] / n, 2)}
                for (wf, act), n in sorted(self.acts.count.items()) if n > 0}
        return {
            "vms": self.vms,
            "tasks": tasks,
            "failures": len(self.rec.failures),
            "activities": self.acts.executions,
            "wall_s": rnd(self.wall_s, 3),
            "tasks_per_s": rnd(tasks / self.wall_s) if self.wall_s else None,
            "activities_per_s": rnd(self.acts.executions / self.wall_s) if self.wall_s else None,
            "latency_ms": self.latency(),
            "unloaded_latency_ms": {**unloaded.latency(), "tasks": u_tasks},
            "submit_ms_p50": rnd(percentile([s.submit_s * 1000 for s in self.rec.samples], 50)),
            "unloaded_submit_ms_mean": rnd(statistics.fmean(
                [s.submit_s * 1000 for s in unloaded.rec.samples])) if u_tasks else None,
            "by_kind": kinds,
            "activity_body_ms_per_task": {"wall": rnd(self.acts.total_wall_s * per, 2),
                                          "cpu": rnd(self.acts.total_cpu_s * per, 2)},
            "activity_body_wall_ms_mean": rnd(1000 * self.acts.total_wall_s
                                              / self.acts.executions, 2)
            if self.acts.executions else None,
            "unloaded_activity_body_wall_ms_per_task": rnd(
                unloaded.acts.total_wall_s * 1000 / u_tasks, 2) if u_tasks else None,
            "activities_by_type": acts,
            "cpu_ms_per_task": {
                "bench_process": rnd(cpu.bench_s * per, 2),
                **{k: rnd(v * per, 2) for k, v in sorted(self.threads.items())},
                "temporal_server": rnd(cpu.server_s * per, 2),
                "postgres_server": rnd(cpu.postgres_s * per, 2),
                "own": rnd((cpu.bench_s + cpu.server_s + cpu.postgres_s) * per, 2),
                "other_processes": rnd(cpu.other_s * per, 2),
                "machine": rnd(cpu.machine_busy_s * per, 2),
            },
            "machine_busy_pct": rnd(100 * cpu.machine_busy_s / cpu.machine_total_s)
            if cpu.machine_total_s else None,
            "postgres_per_task": {"sessions": rnd(self.db.sessions / tasks, 2) if tasks else None,
                                  "transactions": rnd(self.db.transactions / tasks, 2)
                                  if tasks else None,
                                  "statement_ms": rnd(self.db.active_s * per, 2)},
        }


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 3)
    return None


DB_LIBVIRT = ("activity_threads", "starter_threads", "postgres_server")
TEMPORAL_SIDE = ("temporal_server", "core_threads", "event_loop", "workflow_threads")


def overhead(tk: dict[str, Any], bl: dict[str, Any]) -> dict[str, Any]:
    """Where taskomatic's extra cost per task goes.

    Throughput view (CPU ms per task, both sides measured alike): "DB + libvirt work" is the
    activity threads (psycopg2, the in-process libvirt test driver, the activities' logging),
    the starter's inventory pre-checks and the PostgreSQL server; "Temporal side" is the dev
    server and the rest of this process: the SDK's Rust core, its Python event loop (payload
    conversion, dispatch) and the sandboxed workflow threads (SDK sandbox + taskomatic's
    workflow code). Latency view (one chain in flight): the extra latency against the extra
    time spent in activity bodies and in submitting (the pre-check).
    """
    t, b = tk["cpu_ms_per_task"], bl["cpu_ms_per_task"]
    parts = {key: t.get(key, 0.0) - b.get(key, 0.0) for key in DB_LIBVIRT + TEMPORAL_SIDE}
    db_libvirt = sum(parts[k] for k in DB_LIBVIRT)
    temporal = sum(parts[k] for k in TEMPORAL_SIDE)
    tu, bu = tk["unloaded_latency_ms"], bl["unloaded_latency_ms"]
    lat_extra = (tu["mean"] - bu["mean"]) if tu["mean"] and bu["mean"] else None
    body_extra = ((tk["unloaded_activity_body_wall_ms_per_task"] or 0)
                  - (bl["unloaded_activity_body_wall_ms_per_task"] or 0))
    submit_extra = (tk["unloaded_submit_ms_mean"] or 0) - (bl["unloaded_submit_ms_mean"] or 0)
    return {
        # On a saturated machine throughput goes as 1 / CPU per task: the ratio of the two
        # sides' own CPU per task predicts the throughput ratio without other users' noise.
        "cpu_based_throughput_ratio": ratio(b["own"], t["own"]),
        "extra_cpu_ms_per_task": {k: rnd(v, 2) for k, v in parts.items()},
        "extra_cpu_ms_per_task_db_libvirt": rnd(db_libvirt, 2),
        "extra_cpu_ms_per_task_temporal_side": rnd(temporal, 2),
        "cpu_mostly": _mostly(db_libvirt, temporal),
        "unloaded_extra_latency_ms": rnd(lat_extra),
        "unloaded_extra_activity_body_ms": rnd(body_extra),
        "unloaded_extra_submit_ms": rnd(submit_extra),
        "unloaded_extra_rest_ms": rnd(lat_extra - body_extra - submit_extra)
        if lat_extra is not None else None,
    }


def _mostly(db_libvirt: float, temporal: float) -> str:
    low, high = sorted((db_libvirt, temporal))
    if low > 0 and high / low < 1.25:
        return "about evenly split"
    return "mostly DB + libvirt work" if db_libvirt > temporal else "mostly the Temporal side"


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 10 else f"{value:,.2f}{unit}"
    return f"{value}{unit}"


def render(console: Console, tk: dict[str, Any], bl: dict[str, Any], over: dict[str, Any],
           head: list[str]) -> None:
    for line in head:
        console.print(line, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("taskomatic", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("tk/base", justify="right")

    def row(label: str, a: Any, b: Any, show_ratio: bool = True) -> None:
        r = ratio(a, b) if show_ratio else None
        table.add_row(label, fmt(a), fmt(b), fmt(r, "x") if r is not None else "")

    row("VM chains (3 tasks each)", tk["vms"], bl["vms"], False)
    row("tasks done / failed", f"{tk['tasks']} / {tk['failures']}",
        f"{bl['tasks']} / {bl['failures']}", False)
    row("activities executed", tk["activities"], bl["activities"], False)
    row("wall time (s)", tk["wall_s"], bl["wall_s"])
    row("tasks/s", tk["tasks_per_s"], bl["tasks_per_s"])
    row("activities/s", tk["activities_per_s"], bl["activities_per_s"])
    row("task latency p50 (ms)", tk["latency_ms"]["p50"], bl["latency_ms"]["p50"])
    row("task latency p95 (ms)", tk["latency_ms"]["p95"], bl["latency_ms"]["p95"])
    row("  1 in flight: p50 (ms)", tk["unloaded_latency_ms"]["p50"],
        bl["unloaded_latency_ms"]["p50"])
    row("  1 in flight: p95 (ms)", tk["unloaded_latency_ms"]["p95"],
        bl["unloaded_latency_ms"]["p95"])
    row("submit p50 (ms)", tk["submit_ms_p50"], bl["submit_ms_p50"])
    row("activity body wall, mean ms", tk["activity_body_wall_ms_mean"],
        bl["activity_body_wall_ms_mean"])
    for key, label in (("bench_process", "CPU ms/task: bench process"),
                       ("activity_threads", "  activity threads"),
                       ("starter_threads", "  starter pre-check threads"),
                       ("workflow_threads", "  workflow threads"),
                       ("event_loop", "  event loop (SDK, starter)"),
                       ("core_threads", "  SDK core (Rust)"),
                       ("temporal_server", "CPU ms/task: Temporal server"),
                       ("postgres_server", "CPU ms/task: PostgreSQL"),
                       ("own", "CPU ms/task: these three"),
                       ("other_processes", "CPU ms/task: other processes"),
                       ("machine", "CPU ms/task: whole machine")):
        row(label, tk["cpu_ms_per_task"].get(key), bl["cpu_ms_per_task"].get(key),
            key != "other_processes")
    row("machine CPU busy (%)", tk["machine_busy_pct"], bl["machine_busy_pct"], False)
    row("PG sessions opened/task", tk["postgres_per_task"]["sessions"],
        bl["postgres_per_task"]["sessions"], False)
    row("PG transactions/task", tk["postgres_per_task"]["transactions"],
        bl["postgres_per_task"]["transactions"], False)
    console.print(table)

    kinds = Table(title="latency by task kind (ms)", title_justify="left")
    for col in ("kind", "tk p50", "tk p95", "base p50", "base p95", "tk 1-up", "base 1-up"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, k in tk["by_kind"].items():
        b = bl["by_kind"].get(kind, {})
        kinds.add_row(kind, fmt(k["p50_ms"]), fmt(k["p95_ms"]), fmt(b.get("p50_ms")),
                      fmt(b.get("p95_ms")), fmt(k["unloaded_p50_ms"]),
                      fmt(b.get("unloaded_p50_ms")))
    console.print(kinds)
    console.print("  (1-up = p50 with one VM chain in flight)", highlight=False)

    acts = Table(title="activity bodies (mean per execution, loaded)", title_justify="left")
    for col in ("workflow.activity", "count", "wall ms", "CPU ms"):
        acts.add_column(col, justify="left" if col == "workflow.activity" else "right")
    for name, a in {**tk["activities_by_type"], **bl["activities_by_type"]}.items():
        acts.add_row(name, fmt(a["count"]), fmt(a["wall_ms"]), fmt(a["cpu_ms"]))
    console.print(acts)

    e = over["extra_cpu_ms_per_task"]
    console.print(
        f"throughput taskomatic/baseline {fmt(ratio(tk['tasks_per_s'], bl['tasks_per_s']))}x "
        f"measured, {fmt(over['cpu_based_throughput_ratio'])}x predicted from own CPU per task "
        "(insensitive to other load on the machine). "
        f"Extra CPU per task: DB + libvirt {fmt(over['extra_cpu_ms_per_task_db_libvirt'])} ms "
        f"(activity threads {fmt(e['activity_threads'])}, pre-checks "
        f"{fmt(e['starter_threads'])}, PostgreSQL {fmt(e['postgres_server'])}), Temporal side "
        f"{fmt(over['extra_cpu_ms_per_task_temporal_side'])} ms (server "
        f"{fmt(e['temporal_server'])}, SDK core {fmt(e['core_threads'])}, event loop "
        f"{fmt(e['event_loop'])}, workflow threads {fmt(e['workflow_threads'])}): "
        f"{over['cpu_mostly']}. One in flight, taskomatic tasks take "
        f"{fmt(over['unloaded_extra_latency_ms'])} ms longer on average: activity bodies "
        f"{fmt(over['unloaded_extra_activity_body_ms'])}, submit (inventory pre-check) "
        f"{fmt(over['unloaded_extra_submit_ms'])}, the rest "
        f"{fmt(over['unloaded_extra_rest_ms'])} (workflow code, payloads, Temporal).",
        highlight=False)
