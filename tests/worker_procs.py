"""Worker processes for tests: the real entry point (``python -P -m worker``) in processes of
their own, sharing one task queue; each logs to its own file. They run in the log directory (no
``.taskomatic/env`` of the checkout is read) with the checkout on ``PYTHONPATH``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from starter.client import TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcesses:
    """``python -P -m worker`` processes for ``settings``' task queue, with ``extra``
    ``TASKOMATIC_*`` settings (e.g. ``HOST_UNRESPONSIVE_SECONDS="6"``)."""

    def __init__(self, settings: Settings, log_dir: Path, **extra: str) -> None:
        self.log_dir = log_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
        self.env.update(TASKOMATIC_TEMPORAL_ADDRESS=settings.temporal_address,
                        TASKOMATIC_TASK_QUEUE=settings.task_queue,
                        TASKOMATIC_DATABASE_URL=settings.database_url,
                        TASKOMATIC_MIGRATION_SAVE_DIR=str(settings.migration_save_dir),
                        TASKOMATIC_DEV_ENCRYPTION="false", TASKOMATIC_LOG_FORMAT="json",
                        TASKOMATIC_METRICS_ADDRESS="127.0.0.1:0",
                        PYTHONPATH=str(ROOT))
        self.env.update({f"TASKOMATIC_{k}": v for k, v in extra.items()})
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"worker-{len(self.procs)}.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-P", "-m", "worker"], env=self.env,
                                    cwd=self.log_dir, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def logs(self, tail: int = 3000) -> str:
        """The end of every worker's log, for an assertion message."""
        return "\n".join(p.read_text(errors="replace")[-tail:]
                         for p in sorted(self.log_dir.glob("worker-*.log")))

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no drain, no goodbye (a crashed worker or machine)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)


@contextmanager
def worker_fleet(settings: Settings, temporal_env: WorkflowEnvironment, db: Database,
                 log_dir: Path, label: str, count: int = 1, **extra: str
                 ) -> Iterator[tuple[TaskomaticClient, WorkerProcesses]]:
    """``count`` worker processes on a task queue of their own (``label-xxxxxx``), with a
    client for it; every process is killed at the end."""
    own = settings.model_copy(update={
        "task_queue": f"{label}-{uuid.uuid4().hex[:6]}",
        "temporal_address": temporal_env.client.service_client.config.target_host})
    procs = WorkerProcesses(own, log_dir, **extra)
    for _ in range(count):
        procs.start()
    try:
        yield TaskomaticClient(temporal_env.client, own, db), procs
    finally:
        procs.stop_all()
