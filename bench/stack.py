"""The bench's private stack: a temp dir, a fresh PostgreSQL database, a Temporal dev server and
one in-process worker. Every piece is a context manager, so everything goes away at exit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import libvirt
import psycopg2
import psycopg2.extensions
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

from bench.baseline import BaselineWorkflow, noop
from bench.probe import ActivityProbe, parent_pid
from starter.dev.parts import embedded_postgres, temporal_binary
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import (
    drop_database,
    ensure_database,
    get_database,
    is_reachable,
    upgrade,
    with_dbname,
)
from taskomatic.settings import Settings
from taskomatic.temporal import SEARCH_ATTRIBUTES
from worker import build_worker, write_workflow_bytecode

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

# The start line recommended by shared/notes/temporal-on-this-machine.md (the SQLite file itself
# is given as dev_server_database_filename, which the SDK passes on as --db-filename).
DEV_SERVER_ARGS = (
    "--sqlite-pragma", "journal_mode=wal",
    "--sqlite-pragma", "synchronous=normal",
    "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "frontend.enableServerVersionCheck=false",
)


@contextmanager
def postgres_server(url: str | None, embedded: bool, data_dir: Path) -> Iterator[tuple[str, str]]:
    """(server URL, "local"/"given"/"embedded"): the given or local server if it answers, else an
    embedded one under ``data_dir``, stopped at exit."""
    if url and not embedded:
        yield url, "given"
        return
    if not embedded and is_reachable(LOCAL_PG):
        yield LOCAL_PG, "local"
        return
    server = embedded_postgres(data_dir)
    try:
        yield str(server.get_uri("postgres")), "embedded"
    finally:
        server.cleanup()  # its own atexit stop is skipped by a final os._exit


@contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """Create and migrate database ``name``; drop it (and its connections) at exit."""
    url = with_dbname(server_url, name)
    ensure_database(url)
    try:
        upgrade(url)
        yield url
    finally:
        get_database(url).close()
        drop_database(url)


def postmaster_pid(db_url: str) -> int | None:
    """The PostgreSQL server's main process, if it runs on this machine."""
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            backend = int(row[0]) if row else -1
        parent = parent_pid(backend)
        if parent is None or not Path(f"/proc/{parent}/comm").read_text().startswith("postgres"):
            return None  # a server elsewhere: its CPU is not seen from here
        return parent
    finally:
        conn.close()


@contextmanager
def stdio_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` meanwhile: a child process started inside
    writes there (the dev server prints a banner and its log to what it inherits)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@asynccontextmanager
async def temporal_dev_server(db_file: Path, log_file: Path, probe: ActivityProbe
                              ) -> AsyncIterator[WorkflowEnvironment]:
    """One dev server with SQLite on disk (WAL) and the notes' flags; its client carries the
    probe, which every worker built on that client inherits. Its output goes to ``log_file``."""
    try:
        with stdio_to(log_file):
            env = await WorkflowEnvironment.start_local(
                data_converter=pydantic_data_converter,
                interceptors=[probe],
                dev_server_existing_path=temporal_binary(),
                dev_server_database_filename=str(db_file),
                search_attributes=SEARCH_ATTRIBUTES,
                dev_server_extra_args=list(DEV_SERVER_ARGS),
            )
    except Exception:
        if log_file.exists():
            sys.stderr.write("dev server output:\n" + log_file.read_text(errors="replace")[-3000:])
        raise
    try:
        yield env
    finally:
        await env.shutdown()


async def bench_worker(client: Client, settings: Settings, hypervisors: Hypervisors,
                       executor: ThreadPoolExecutor, pollers: int | None = None) -> Worker:
    """taskomatic's worker exactly as ``build_worker`` configures it, also serving the baseline
    workflow and its no-op activity: one worker, one task queue, one set of settings.

    The worker ``build_worker`` returns only lends its configuration; it is started and stopped
    at once (nothing is queued yet), because the SDK refuses a second worker on the same task
    queue while the first one is registered with the client. ``pollers`` (an experiment, not
    taskomatic's setting) overrides the workflow and activity task pollers of both sides.
    """
    template = build_worker(client, settings, hypervisors, executor)
    config: Any = template.config()
    async with template:
        pass
    config["workflows"] = [*config["workflows"], BaselineWorkflow]
    write_workflow_bytecode([BaselineWorkflow])  # as build_worker does for taskomatic's
    config["activities"] = [*config["activities"], noop]
    if pollers is not None:
        config["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(maximum=pollers)
        config["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(maximum=pollers)
    return Worker(**config)


def worker_settings(worker: Worker) -> dict[str, Any]:
    config: Any = worker.config(active_config=True)
    keys = ("max_concurrent_activities", "max_concurrent_workflow_tasks", "max_cached_workflows",
            "workflow_task_poller_behavior", "activity_task_poller_behavior")
    found = {key: config.get(key) for key in keys}
    for key in ("workflow_task_poller_behavior", "activity_task_poller_behavior"):
        behavior = found[key]
        found[key] = f"{type(behavior).__name__}({getattr(behavior, 'maximum', '?')})"
    found["activity_threads"] = getattr(config.get("activity_executor"), "_max_workers", None)
    found["workflow_runner"] = type(config.get("workflow_runner")).__name__
    return found


def versions(db_url: str) -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    cli = subprocess.run([temporal_binary(), "--version"], capture_output=True, text=True,
                         check=False).stdout.strip().removeprefix("temporal version ")
    lib = libvirt.getVersion()
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            pg = str(row[0]) if row else "?"
    finally:
        conn.close()
    return {
        "python": platform.python_version(),
        "temporalio": dist("temporalio"),
        "temporal_cli": cli,
        "libvirt": f"{lib // 1_000_000}.{lib // 1000 % 1000}.{lib % 1000}",
        "libvirt_python": dist("libvirt-python"),
        "psycopg2": dist("psycopg2-binary"),
        "pydantic": dist("pydantic"),
        "postgresql": pg,
        "taskomatic": dist("taskomatic"),
        "taskomatic_commit": _git_commit(),
    }


def _git_commit() -> str:
    """The work tree's commit, with "+dirty" if tracked files differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "-"
    return head + ("+dirty" if dirty.strip() else "")


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model,
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "executable": sys.executable}
