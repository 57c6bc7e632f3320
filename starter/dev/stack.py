"""``taskomatic dev``: the whole stack on one machine, started, supervised and stopped together.

A Temporal dev server (SQLite in ``<state>/temporal.db``, Web UI on the gRPC port + 1000);
PostgreSQL (the server in ``TASKOMATIC_DATABASE_URL`` if it answers, else an embedded one in
``<state>/pg``, database ``taskomatic``), migrated; N libvirt test-driver hosts ``host-1`` …;
a worker subprocess. Logs: ``<state>/temporal.log``, ``<state>/worker.log`` (JSON lines).

The worker is restarted when it exits (killed, crashed, or stopped with SIGTERM, which drains it
first: ``TASKOMATIC_WORKER_DRAIN_SECONDS``), with a line saying so: tasks wait for it in Temporal
and carry on. It is not restarted when it exits with status 3 (unusable keys, unreachable
inventory: a restart cannot mend that) or more than ``WORKER_RESTARTS`` times within
``RESTART_WINDOW_SECONDS``; then the stack stops. Any other child that ends stops the stack.

Settings are ``TASKOMATIC_*`` variables over defaults; ``<state>/env`` is this command's *output*
(rewritten on every start) so that ``taskomatic`` commands run from the same directory drive this
stack. Port policy: if the Temporal port or UI port is taken, start-up fails and says which
setting to change; no port is picked silently, since other shells find the stack by its address.

Test-driver hypervisors live in the worker process and restart empty, so every start deletes the
dev hosts' VM and reservation rows. A same-named test host of another directory (same database) is
re-pointed here; this directory's test hosts beyond ``--hosts`` are marked down. Tasks a previous
run left unfinished resume against the empty hosts and may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lab.dev import DevLab
from lab.models import LabError
from starter import TaskomaticClient
from starter.dev import security as dev_security
from starter.dev.demo import demo_exit_status
from starter.dev.parts import (
    embedded_postgres,
    forget_dead_pg_users,
    reset_dev_hosts,
    temporal_dev_server_argv,
    write_test_host,
)
from starter.dev.processes import Child, DevError, port_in_use, shown, signals_ignored
from taskomatic import inventory
from taskomatic.inventory.db import (
    Database,
    ensure_database,
    get_database,
    is_reachable,
    upgrade,
    with_dbname,
)
from taskomatic.logs import get_logger
from taskomatic.models import HostSpec
from taskomatic.settings import Settings, split_address
from taskomatic.temporal import connect_temporal

log = get_logger(component="dev")

HOST_VCPUS = 16
HOST_MEMORY_MIB = 32_768
READY_SECONDS = 20.0
WORKER_STOP_SECONDS = 10.0  # beyond the worker's drain time
WORKER_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
SERVER_STOP_SECONDS = 5.0


# --- small helpers ---------------------------------------------------------------------------


def _display_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings other processes need to drive this stack, as environment variables."""
    return {
        "TASKOMATIC_TEMPORAL_ADDRESS": settings.temporal_address,
        "TASKOMATIC_TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TASKOMATIC_TEMPORAL_UI_URL": settings.temporal_ui_url,
        "TASKOMATIC_TASK_QUEUE": settings.task_queue,
        "TASKOMATIC_DATABASE_URL": settings.database_url,
        **dev_security.security_env(settings),
    }


def _dotenv_line(key: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{key}="{escaped}"\n'


# --- the stack -------------------------------------------------------------------------------


class DevStack:
    def __init__(self, state_dir: Path, console: Console) -> None:
        self.dir = state_dir.resolve()
        self.console = console
        self.children: list[Child] = []
        self.embedded_pg: Any = None
        self._lock: IO[str] | None = None
        self.lab: DevLab | None = None  # `taskomatic dev --lab`
        self.worker: Child | None = None
        self._restarts: list[float] = []  # when the worker was restarted (monotonic)
        self._test_hosts: tuple[str, int] | None = None  # database URL, count (test driver)

    # start-up, in order

    def lock(self) -> None:
        """One stack per state directory (the lock dies with the process: it never goes stale)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = (self.dir / "dev.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise DevError(f"a dev stack is already running from {self.dir} (pid {holder})"
                           ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    async def start_temporal(self, base: Settings) -> tuple[Settings, Client]:
        try:
            host, port = split_address(base.temporal_address, "TASKOMATIC_TEMPORAL_ADDRESS")
        except ValueError as err:
            raise DevError(str(err)) from None
        ui_port = port + 1000
        for what, number in (("Temporal", port), ("Temporal Web UI", ui_port)):
            if port_in_use(host, number):
                raise DevError(
                    f"port {number} on {host} ({what}) is already in use: is another "
                    f"`taskomatic dev` or Temporal server running? Stop it, or pick another port, "
                    f"e.g. TASKOMATIC_TEMPORAL_ADDRESS={host}:{port + 100} (the UI uses port+1000)")
        argv = [*temporal_dev_server_argv(self.dir / "temporal.db", host, port,
                                          base.temporal_namespace, ui_port),
                *dev_security.ui_codec_flags(base, self.dir)]
        server = Child.spawn("Temporal server", argv, self.dir / "temporal.log",
                             SERVER_STOP_SECONDS)
        self.children.append(server)
        settings = base.model_copy(update={"temporal_ui_url": f"http://{host}:{ui_port}",
                                           "state_dir": self.dir})
        return settings, await self._wait_for_temporal(settings, server)

    async def _wait_for_temporal(self, settings: Settings, server: Child) -> Client:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                return await connect_temporal(settings)
            except RuntimeError as err:
                server.check_alive()
                if time.monotonic() > deadline:
                    raise DevError(f"Temporal did not answer at {settings.temporal_address} "
                                   f"within {READY_SECONDS:.0f} s: {err}") from None
            await asyncio.sleep(0.1)

    def start_postgres(self, configured_url: str) -> str:
        """The configured server if it answers, else an embedded one; returns the database URL."""
        if is_reachable(configured_url):
            url = configured_url
        else:
            self.console.print(f"[dim]PostgreSQL at {_display_url(configured_url)} does not "
                               f"answer; starting an embedded server in {shown(self.dir / 'pg')}")
            url = with_dbname(self._start_embedded_postgres(), "taskomatic")
        created = ensure_database(url)
        applied = upgrade(url)
        log.info("database ready", url=_display_url(url), created=created, migrations=applied)
        return url

    def _start_embedded_postgres(self) -> str:
        pg_dir = self.dir / "pg"
        forget_dead_pg_users(pg_dir)
        self.embedded_pg = embedded_postgres(pg_dir)
        return str(self.embedded_pg.get_uri("postgres"))

    def prepare_hosts(self, database_url: str, count: int) -> list[HostSpec]:
        hosts_dir = self.dir / "hosts"
        specs = [HostSpec(name=name, vcpus=HOST_VCPUS, memory_mib=HOST_MEMORY_MIB,
                          uri=write_test_host(hosts_dir, name, HOST_VCPUS, HOST_MEMORY_MIB))
                 for name in (f"host-{i}" for i in range(1, count + 1))]
        db = Database(database_url, max_connections=2)
        try:
            vms, reservations = reset_dev_hosts(db, specs, f"test://{hosts_dir}/")
            if vms or reservations:
                self.console.print(f"[dim]The test-driver hosts restart empty: removed {vms} VM "
                                   f"and {reservations} reservation rows of the previous run.")
            for spec in specs:
                inventory.add_host(db, spec)
        except ApplicationError as err:
            raise DevError(f"cannot register the dev hosts: {err}") from None
        finally:
            db.close()
        self._test_hosts = (database_url, count)
        return specs

    def write_env(self, settings: Settings) -> Path:
        path = self.dir / "env"
        lines = ["# Written by `taskomatic dev` on every start: the stack it runs.\n"]
        lines += [_dotenv_line(k, v) for k, v in _settings_env(settings).items()]
        path.write_text("".join(lines), encoding="utf-8")
        return path

    async def start_worker(self, settings: Settings, client: Client) -> None:
        worker = self.spawn_python("worker", "worker", "worker.log", settings,
                                   settings.worker_drain_seconds + WORKER_STOP_SECONDS)
        self.worker = worker
        await self.await_ready(worker, lambda: _is_polling(client, settings, worker.proc.pid),
                               f"the worker did not poll task queue {settings.task_queue!r}",
                               interval=0.2)

    def spawn_python(self, name: str, module: str, log_name: str, settings: Settings,
                     stop_seconds: float) -> Child:
        """``python -m MODULE``, supervised, with this stack's settings in its environment and
        its output in ``<state>/LOG_NAME``."""
        env = {**os.environ, **_settings_env(settings), "TASKOMATIC_LOG_FORMAT": "json",
               "PYTHONUNBUFFERED": "1"}
        child = Child.spawn(name, [sys.executable, "-P", "-m", module], self.dir / log_name,
                            stop_seconds, env=env)
        self.children.append(child)
        return child

    async def await_ready(self, child: Child, ready: Callable[[], Awaitable[bool]],
                          not_ready: str, interval: float) -> None:
        """Wait until ``ready()``; a DevError if ``child`` dies first or READY_SECONDS pass
        (``not_ready`` says what did not happen)."""
        deadline = time.monotonic() + READY_SECONDS
        while not await ready():
            child.check_alive()
            if time.monotonic() > deadline:
                raise DevError(f"{not_ready} within {READY_SECONDS:.0f} s; see "
                               f"{shown(child.log_path)}")
            await asyncio.sleep(interval)

    # running and stopping

    def summary(self, settings: Settings, hosts: list[HostSpec], demo: bool) -> None:
        grid = Table.grid(padding=(0, 2))
        rows = [
            ("Temporal", f"{settings.temporal_address}  (namespace {settings.temporal_namespace}"
                         f", task queue {settings.task_queue})"),
            ("Web UI", settings.temporal_ui_url),
            ("PostgreSQL", _display_url(settings.database_url)
             + ("  (embedded)" if self.embedded_pg else "")),
            ("Hosts", f"{', '.join(h.name for h in hosts)}  ("
                      + (self.lab.describe() if self.lab else
                         f"libvirt test driver, {HOST_VCPUS} vCPUs / {HOST_MEMORY_MIB} MiB each")
                      + ")"),
            ("Logs", ", ".join(shown(c.log_path) for c in self.children)),
            ("Settings", f"{shown(self.dir / 'env')}  (used by `taskomatic` commands run here)"),
            *dev_security.summary_rows(settings),
        ]
        for label, value in rows:
            grid.add_row(f"[bold]{label}[/]", value)
        self.console.print("[bold green]taskomatic dev stack is up[/]")
        self.console.print(grid)
        self.console.print(f"API  http://{settings.api_address}", highlight=False, markup=False)
        self.console.print(f"     admin token (dev-admin) in {shown(self.dir / 'api-token')}",
                           highlight=False, markup=False)
        if not demo:
            self.console.print("[bold]Ctrl-C to stop.[/]")

    async def supervise(self) -> int:
        """Run until we are interrupted, restarting the worker when it exits; 1 when another
        child ends or the worker cannot be restarted (see the module)."""
        while True:
            for i, child in enumerate(self.children):
                if child.proc.poll() is None:
                    continue
                if child is self.worker and self._may_restart(child):
                    self.children[i] = await self.restart_worker(child)
                    continue
                try:
                    child.check_alive()
                except DevError as err:
                    self.console.print(f"[bold red]{escape(str(err))}[/]", highlight=False)
                return 1
            await asyncio.sleep(0.5)

    def _may_restart(self, worker: Child) -> bool:
        if worker.proc.returncode == 3:
            return False
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_SECONDS]
        if len(self._restarts) >= WORKER_RESTARTS:
            self.console.print(f"[bold red]The worker exited {len(self._restarts) + 1} times "
                               f"within {RESTART_WINDOW_SECONDS:.0f} s; not restarting it.[/]")
            return False
        self._restarts.append(now)
        return True

    async def restart_worker(self, worker: Child) -> Child:
        """Start the worker again (its log continues). Test-driver hosts live in the worker
        process, so they restart empty: their VM and reservation rows are reset as at start."""
        ending = worker.ending()
        log.warning("worker ended; restarting it", ending=ending, pid=worker.proc.pid,
                    restarts=len(self._restarts))
        self.console.print(f"[yellow]The worker {ending}; restarting it[/] (log: "
                           f"{shown(worker.log_path)})", highlight=False)
        if self.lab is None and self._test_hosts is not None:
            await asyncio.to_thread(self.prepare_hosts, *self._test_hosts)
        self.worker = worker.respawn()
        log.info("worker restarted", pid=self.worker.proc.pid)
        return self.worker

    def stop(self) -> None:
        """Worker, then server, then the embedded PostgreSQL; the state directory stays."""
        for child in reversed(self.children):
            child.stop()
        if self.lab is not None:
            self.lab.stop()
        if self.embedded_pg is not None:
            self.embedded_pg.cleanup()
            log.info("embedded PostgreSQL stopped", pgdata=str(self.dir / "pg"))
        if self._lock is not None:
            self._lock.close()
        if self.children:
            self.console.print("[dim]dev stack stopped.[/]")


async def _is_polling(client: Client, settings: Settings, pid: int) -> bool:
    """True once the worker process ``pid`` polls the task queue (identity ``pid@hostname``)."""
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=settings.temporal_namespace, task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return any(p.identity.startswith(f"{pid}@") for p in resp.pollers)


# --- entry point -----------------------------------------------------------------------------


async def _run(stack: DevStack, hosts: int, demo: bool, lab: bool = False) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: `&` in a script ignores it
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            loop.add_signal_handler(sig, main.cancel)
    stack.lock()
    base = Settings(_env_file=None)  # env vars over defaults: <state>/env is our output
    base = dev_security.prepare(stack.dir, base, DevError)
    settings, client = await stack.start_temporal(base)
    url = await asyncio.to_thread(stack.start_postgres, settings.database_url)
    settings = settings.model_copy(update={"database_url": url})
    if lab:
        stack.lab = DevLab(settings.lab_dir, settings.lab_cache_dir, stack.console)
        specs = await asyncio.to_thread(stack.lab.prepare_hosts, url, hosts, HOST_VCPUS,
                                        HOST_MEMORY_MIB)
    else:
        specs = await asyncio.to_thread(stack.prepare_hosts, url, hosts)
    stack.write_env(settings)
    await stack.start_worker(settings, client)
    await dev_security.start_api(stack, settings)
    stack.summary(settings, specs, demo)
    if not demo:
        return await stack.supervise()
    db = get_database(settings.database_url)
    try:
        return await demo_exit_status(TaskomaticClient(client, settings, db), stack.console)
    finally:
        db.close()


def run_dev(hosts: int = 3, demo: bool = False, state_dir: Path = Path(".taskomatic"),
            lab: bool = False) -> int:
    """Run the dev stack until Ctrl-C/SIGTERM (or, with ``demo``, until the demo is done).

    Exit status: 0 on a requested stop or a successful demo; 1 if start-up, a child process or
    the demo failed; 130 if the demo was interrupted.
    """
    console = Console()
    stack = DevStack(state_dir, console)
    try:
        if hosts < 1:
            raise DevError(f"--hosts must be at least 1 (got {hosts})")
        return asyncio.run(_run(stack, hosts, demo, lab))
    except (DevError, LabError) as err:
        console.print(f"[bold red]taskomatic dev:[/] {escape(str(err))}", highlight=False)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("\n[yellow]stopping…[/]")
        return 130 if demo else 0
    finally:
        with signals_ignored():  # a second Ctrl-C or SIGTERM must not cut the clean-up short
            stack.stop()
