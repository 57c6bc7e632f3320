"""Instruments: an activity interceptor (executions, wall and CPU time of activity bodies) and a
CPU sampler for the processes involved (this one, the Temporal dev server, PostgreSQL backends).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, thread_time
from typing import Any

import psycopg2
import temporalio.client
import temporalio.worker
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput

Key = tuple[str, str]  # (workflow type, activity type)


@dataclass(frozen=True)
class ActivityTotals:
    count: Counter[Key]
    wall_s: dict[Key, float]
    cpu_s: dict[Key, float]

    def __sub__(self, other: ActivityTotals) -> ActivityTotals:
        return ActivityTotals(
            count=self.count - other.count,
            wall_s={k: v - other.wall_s.get(k, 0.0) for k, v in self.wall_s.items()},
            cpu_s={k: v - other.cpu_s.get(k, 0.0) for k, v in self.cpu_s.items()},
        )

    def __add__(self, other: ActivityTotals) -> ActivityTotals:
        keys = set(self.wall_s) | set(other.wall_s)
        return ActivityTotals(
            count=self.count + other.count,
            wall_s={k: self.wall_s.get(k, 0.0) + other.wall_s.get(k, 0.0) for k in keys},
            cpu_s={k: self.cpu_s.get(k, 0.0) + other.cpu_s.get(k, 0.0) for k in keys},
        )

    @classmethod
    def empty(cls) -> ActivityTotals:
        return cls(Counter(), {}, {})

    @property
    def executions(self) -> int:
        return sum(self.count.values())

    @property
    def total_wall_s(self) -> float:
        return sum(self.wall_s.values())

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


class ActivityProbe(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """Counts every activity execution (retries included) and times its body.

    Given to the client, it reaches every worker built on that client (``build_worker`` too).

    Synchronous activities are timed inside their executor thread: wall time and the thread's
    CPU time of the function alone (not the wait for a free thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: Counter[Key] = Counter()
        self._wall: dict[Key, float] = {}
        self._cpu: dict[Key, float] = {}
        self._queues: dict[Key, str] = {}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self)

    def record(self, key: Key, wall_s: float, cpu_s: float) -> None:
        with self._lock:
            self._count[key] += 1
            self._wall[key] = self._wall.get(key, 0.0) + wall_s
            self._cpu[key] = self._cpu.get(key, 0.0) + cpu_s

    def saw(self, key: Key, task_queue: str) -> None:
        with self._lock:
            self._queues[key] = task_queue

    def queues(self) -> dict[Key, str]:
        """(workflow type, activity type) → the task queue it last ran on."""
        with self._lock:
            return dict(self._queues)

    def totals(self) -> ActivityTotals:
        with self._lock:
            return ActivityTotals(Counter(self._count), dict(self._wall), dict(self._cpu))


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, probe: ActivityProbe) -> None:
        super().__init__(next)
        self._probe = probe

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        key = (info.workflow_type or "-", info.activity_type)
        self._probe.saw(key, info.task_queue)
        if inspect.iscoroutinefunction(input.fn):
            t0, c0 = perf_counter(), thread_time()
            try:
                return await super().execute_activity(input)
            finally:
                self._probe.record(key, perf_counter() - t0, thread_time() - c0)
        timed_fn = _timed(input.fn, key, self._probe)
        return await super().execute_activity(dataclasses.replace(input, fn=timed_fn))


def _timed(fn: Callable[..., Any], key: Key, probe: ActivityProbe) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = perf_counter(), thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            probe.record(key, perf_counter() - t0, thread_time() - c0)

    return run


# --- CPU accounting from /proc ---------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds; differences of two snapshots are what a phase used."""

    bench_s: float  # this process: worker, workflows, activities, starter
    server_s: float  # the Temporal dev server
    postgres_s: float  # the whole PostgreSQL server, exited backends included
    machine_busy_s: float  # all CPUs, all processes
    machine_total_s: float

    def __sub__(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(*(a - b for a, b in zip(dataclasses.astuple(self),
                                                   dataclasses.astuple(other), strict=True)))

    def __add__(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                   dataclasses.astuple(other), strict=True)))

    @property
    def other_s(self) -> float:
        """Everything else on the machine: other users' processes, the kernel."""
        return self.machine_busy_s - self.bench_s - self.server_s - self.postgres_s


def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU s, reaped children's CPU s) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()  # f[0] is field 3 (state) of proc(5)
    return (comm, int(f[1]), (int(f[11]) + int(f[12])) / _TICK,
            (int(f[13]) + int(f[14])) / _TICK)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def child_pids(name_prefix: str) -> list[int]:
    """Children of this process whose command name starts with ``name_prefix``."""
    me = os.getpid()
    found = []
    for pid in _pids():
        st = _stat(pid)
        if st and st[1] == me and st[0].startswith(name_prefix):
            found.append(pid)
    return found


class CpuSampler:
    """CPU of this process, the dev server and one PostgreSQL server (its postmaster, its live
    children and the children it has reaped: backends come and go), and of the whole machine."""

    def __init__(self, server_pids: list[int], postmaster_pid: int | None) -> None:
        self.server_pids = server_pids
        self.postmaster_pid = postmaster_pid

    def _postgres_s(self) -> float:
        if self.postmaster_pid is None:
            return 0.0
        main = _stat(self.postmaster_pid)
        if main is None:
            return 0.0
        total = main[2] + main[3]
        for pid in _pids():
            st = _stat(pid)
            if st is not None and st[1] == self.postmaster_pid:
                total += st[2]
        return total

    def snapshot(self) -> CpuSnapshot:
        times = os.times()
        server = sum(st[2] for pid in self.server_pids if (st := _stat(pid)))
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in first]
        idle = ticks[3] + ticks[4]  # idle + iowait
        total = sum(ticks[:8])
        return CpuSnapshot(times.user + times.system, server, self._postgres_s(),
                           (total - idle) / _TICK, total / _TICK)


def parent_pid(pid: int) -> int | None:
    st = _stat(pid)
    return st[1] if st else None


# --- PostgreSQL's own counters for the bench database ---------------------------------------


@dataclass(frozen=True)
class DbCounters:
    sessions: int  # connections opened to the database
    transactions: int  # commits + rollbacks
    active_s: float  # time backends spent executing statements

    def __sub__(self, other: DbCounters) -> DbCounters:
        return DbCounters(self.sessions - other.sessions,
                          self.transactions - other.transactions, self.active_s - other.active_s)

    def __add__(self, other: DbCounters) -> DbCounters:
        return DbCounters(self.sessions + other.sessions,
                          self.transactions + other.transactions, self.active_s + other.active_s)


def db_counters(admin_url: str, database: str) -> DbCounters:
    """pg_stat_database for ``database``, read over a connection to another database."""
    conn = psycopg2.connect(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT sessions, xact_commit + xact_rollback, active_time"
                        " FROM pg_stat_database WHERE datname = %s", (database,))
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return DbCounters(0, 0, 0.0)
    return DbCounters(int(row[0] or 0), int(row[1] or 0), float(row[2] or 0.0) / 1000)


# --- this process's CPU by thread group ------------------------------------------------------

# Python thread-name prefix → group. Threads Python does not know (the SDK's Rust core: gRPC,
# workflow state machines) make up the rest of the process total.
THREAD_GROUPS: tuple[tuple[str, str], ...] = (
    ("activity", "activity_threads"),  # the worker's activity executor (DB + libvirt bodies)
    ("starter", "starter_threads"),  # asyncio.to_thread: the starter's inventory pre-checks
    ("temporal_workflow_", "workflow_threads"),  # sandboxed workflow code (SDK + taskomatic)
    ("MainThread", "event_loop"),  # asyncio: SDK Python side, payloads, starter coroutines
)
RUST_GROUP = "core_threads"


def thread_cpu() -> dict[str, float]:
    """Cumulative CPU seconds of this process, split by thread group."""
    groups = dict.fromkeys([g for _, g in THREAD_GROUPS] + ["other_python"], 0.0)
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None:
            continue
        try:
            raw = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        cpu = (int(f[11]) + int(f[12])) / _TICK
        group = next((g for prefix, g in THREAD_GROUPS if thread.name.startswith(prefix)),
                     "other_python")
        groups[group] += cpu
    times = os.times()
    groups[RUST_GROUP] = times.user + times.system - sum(groups.values())
    return groups


def sub_dict(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: v - b.get(k, 0.0) for k, v in a.items()}


def add_dict(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}
