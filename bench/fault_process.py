"""A worker process for the fault runs (``bench.faults``) on hosts that outlive the worker (the
lab's libvirtd hosts): the production entry point, ``python -P -m worker``, configured by
environment variables only, which a run may stop (SIGTERM, then its drain), kill (SIGKILL) and
replace by a new process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from taskomatic.settings import Settings

REPO = Path(__file__).resolve().parent.parent
STOP_SECONDS = 60.0  # a stopped worker's drain is ``drain_seconds``; this is the backstop

# The settings a worker process of the runs takes from the rig's (``TASKOMATIC_<NAME>``).
PASSED = ("temporal_address", "temporal_namespace", "task_queue", "database_url",
          "migration_save_dir", "stop_timeout_seconds", "migrations_out_per_host",
          "migrations_in_per_host", "migrations_in_cluster", "migration_bandwidth_mib_s",
          "max_concurrent_activities", "activity_threads")


def worker_env(settings: Settings, drain_seconds: float) -> dict[str, str]:
    """The environment of a worker process for ``settings``: this process's own without its
    ``TASKOMATIC_*`` variables, then the ``PASSED`` settings, a drain of ``drain_seconds``, no
    payload encryption (the rig's client has none), JSON logs, and no scheduled Reconcile during
    the runs (a run reports what its tasks left for one, then runs it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update({f"TASKOMATIC_{name.upper()}": str(getattr(settings, name)) for name in PASSED})
    env.update(TASKOMATIC_WORKER_DRAIN_SECONDS=str(drain_seconds),
               TASKOMATIC_RECONCILE_INTERVAL_SECONDS="86400",
               TASKOMATIC_DEV_ENCRYPTION="false", TASKOMATIC_LOG_FORMAT="json",
               TASKOMATIC_LOG_LEVEL="info")
    return env


class WorkerProcess:
    """``python -P -m worker`` for ``settings``' task queue (its ordering queue included), one
    process at a time, its output appended to ``log``. ``start``, ``stop`` (SIGTERM: the
    worker drains for ``drain_seconds``, then exits) and ``kill`` (SIGKILL of its process group:
    no drain, nothing said to Temporal) as often as the runs need; ``close`` at the end."""

    def __init__(self, settings: Settings, log: Path, drain_seconds: float = 2.0) -> None:
        self.env = worker_env(settings, drain_seconds)
        self.log = log
        self.started = 0  # processes started so far
        self._proc: subprocess.Popen[bytes] | None = None

    async def prepare(self) -> None:
        """Nothing to prepare: a process reads its settings from its environment."""

    async def start(self) -> None:
        """Start a worker process; returns once it polls its task queue (it logs "worker
        started"), or raises ``RuntimeError`` with its log's tail if it exited."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "worker"], env=self.env, cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.started += 1
        proc = self._proc
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the worker process exited ({proc.returncode}):\n"
                                   + self._tail(offset))
            if b"worker started" in self._read(offset):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the worker process did not start within 30 s:\n" + self._tail(offset))

    async def stop(self) -> int:
        """SIGTERM, as a rolling deploy stops a worker; returns once it exited (0: nothing of
        ``ReplaceableWorker.stop``'s collected coroutines here)."""
        await self._end(signal.SIGTERM)
        return 0

    async def kill(self) -> None:
        """SIGKILL of the worker's process group: it dies at once, mid-step."""
        await self._end(signal.SIGKILL)

    async def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            await self._end(signal.SIGTERM)

    async def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            await asyncio.to_thread(proc.wait, STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, STOP_SECONDS)

    def _read(self, offset: int) -> bytes:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read()

    def _tail(self, offset: int, lines: int = 30) -> str:
        return "\n".join(self._read(offset).decode(errors="replace").splitlines()[-lines:])

