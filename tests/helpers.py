"""Small shared helpers for the suite: threads started together, errors unpacked, hosts isolated."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.migration import HEARTBEAT_THROTTLE
from activities.ordering import wake_tasks
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.errors import ErrorInfo, error_info
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import HostState
from taskomatic.models.events import TaskEvent
from taskomatic.settings import Settings
from worker import TASK_WORKFLOWS, WORKFLOW_RUNNER, activity_list, build_ordering_worker

T = TypeVar("T")


def run_together(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``fn(0) .. fn(n-1)`` on ``n`` threads released at the same instant.

    Returns each call's result or the exception it raised, in index order.
    """
    barrier = threading.Barrier(n)

    def one(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return fn(i)
        except BaseException as err:  # collected, asserted on by the caller
            return err

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def app_error(err: BaseException) -> tuple[ApplicationError, ErrorInfo]:
    """``err`` as the ApplicationError it must be, with its ErrorInfo."""
    assert isinstance(err, ApplicationError), f"expected ApplicationError, got {err!r}"
    return err, error_info(err)


def force_host_state(db: Database, host: str, state: HostState) -> None:
    """Put ``host`` in ``state`` with a plain UPDATE, whatever its state (a test's setup; the
    product changes states only through the transitions of ``taskomatic.states``)."""
    with db.transaction() as cur:
        cur.execute("UPDATE hosts SET state = %s, updated_at = now() WHERE name = %s",
                    (state.value, host))


@contextmanager
def only_hosts_up(db: Database, keep: Iterable[str]) -> Iterator[None]:
    """Take every 'up' host not in ``keep`` out of service for the block, so auto-placement
    sees only the test's own hosts; their state is restored afterwards."""
    kept = set(keep)
    others = [h.name for h in inventory.list_hosts(db) if h.state == HostState.UP
              and h.name not in kept]
    for name in others:
        force_host_state(db, name, HostState.DOWN)
    try:
        yield
    finally:
        for name in others:
            force_host_state(db, name, HostState.UP)


def free_port_pair() -> int:
    """A free port p whose p + 1000 (the dev server's Web UI) is free too."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 1000 < 65536:
            with socket.socket() as ui:
                try:
                    ui.bind(("127.0.0.1", port + 1000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


@contextmanager
def host_row_locked(url: str, host: str) -> Iterator[Callable[[int], None]]:
    """Hold ``host``'s row lock (as a placing task does) in a separate session for the block.

    Yields ``wait_for_waiters(n)``, which returns once ``n`` other sessions are blocked on a lock,
    so a test can line up concurrent callers behind the lock before letting them all go.
    """
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM hosts WHERE name = %s FOR UPDATE", (host,))
            assert cur.fetchone() is not None, f"no host {host!r}"

        def wait_for_waiters(n: int, timeout: float = 10.0) -> None:
            deadline = time.monotonic() + timeout
            probe = psycopg2.connect(url)
            probe.autocommit = True
            try:
                with probe.cursor() as cur:
                    while True:
                        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                                    " current_database() AND wait_event_type = 'Lock'")
                        row = cur.fetchone()
                        blocked = row[0] if row else 0
                        if blocked >= n:
                            return
                        assert time.monotonic() < deadline, f"{blocked} sessions blocked, not {n}"
                        time.sleep(0.02)
            finally:
                probe.close()

        yield wait_for_waiters
    finally:
        conn.rollback()
        conn.close()


async def faulty_client(temporal_env: WorkflowEnvironment, settings: Settings,
                        hypervisors: Hypervisors, db: Database,
                        replaced: Callable[..., Any]) -> AsyncIterator[TaskomaticClient]:
    """A client whose tasks run on a worker of their own where one activity (by its name) is
    ``replaced``: fault injection with everything else real."""
    name = getattr(replaced, "__temporal_activity_definition").name
    queue = settings.model_copy(update={"task_queue": f"faulty-{uuid.uuid4().hex[:6]}"})
    acts = [a for a in activity_list(queue, hypervisors, temporal_env.client)
            if getattr(a, "__name__", "") != name]
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with Worker(temporal_env.client, task_queue=queue.task_queue,
                          workflows=TASK_WORKFLOWS, workflow_runner=WORKFLOW_RUNNER,
                          activities=[*acts, replaced], activity_executor=executor,
                          max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE), \
                build_ordering_worker(temporal_env.client, queue):
            yield TaskomaticClient(temporal_env.client, queue, db)


@contextlib.asynccontextmanager
async def resource_held(db: Database, temporal: Client, resource: str) -> AsyncIterator[str]:
    """Hold ``resource`` (``vm:NAME``) in the ordering table as a task outside Temporal would, so
    tasks submitted meanwhile wait in line for it; on leaving, release it and wake them.
    Yields the holder's id (what a waiting task names as the holder)."""
    holder = f"holder-{uuid.uuid4().hex[:8]}"
    granted, _ = await asyncio.to_thread(ordering.acquire, db, holder, "Test", {resource: 1})
    assert granted.granted, granted.detail
    try:
        yield holder
    finally:
        _, woken = await asyncio.to_thread(ordering.release, db, holder)
        await wake_tasks(temporal, woken)


async def story(client: TaskomaticClient, task_id: str) -> list[TaskEvent]:
    """The task's log once its end is recorded (the worker records ends within ~1 s)."""
    for _ in range(200):
        events = await client.task_log(task_id)
        if any(e.kind == "end" for e in events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_id}: no end recorded")
