"""The line survives restarts: tasks waiting for a resource or a prerequisite keep their place and
complete, in order, after the worker and the Temporal server (killed with SIGKILL) come back.

This test runs its own Temporal dev server on a SQLite file, so it can kill and restart it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from helpers import free_port_pair
from holding import HoldRequest, HoldResources
from temporalio.client import Client
from temporalio.worker import Worker

from starter.client import TaskHandle, TaskomaticClient
from starter.dev.parts import temporal_dev_server_argv
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.settings import Settings
from taskomatic.temporal import connect_temporal
from worker import WORKFLOW_RUNNER, activity_list, build_ordering_worker
from workflows.kinds import KINDS, TASK_WORKFLOWS, TaskKind

pytestmark = pytest.mark.asyncio


@contextmanager
def _server(db_file: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(temporal_dev_server_argv(db_file, "127.0.0.1", port),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


async def _connect(settings: Settings) -> Client:
    for _ in range(200):
        try:
            return await connect_temporal(settings)
        except RuntimeError:
            await asyncio.sleep(0.1)
    raise AssertionError("the Temporal dev server did not come up")


@asynccontextmanager
async def _worker(client: Client, settings: Settings, hypervisors: Hypervisors
                  ) -> AsyncIterator[None]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with Worker(client, task_queue=settings.task_queue,
                          workflows=[*TASK_WORKFLOWS, HoldResources],
                          workflow_runner=WORKFLOW_RUNNER,
                          activities=activity_list(settings, hypervisors, client),
                          activity_executor=executor), build_ordering_worker(client, settings):
            yield


async def _states(client: TaskomaticClient, handles: list[TaskHandle]) -> list[str]:
    return [(await h.describe()).state for h in handles]


async def test_worker_and_server_restarts_keep_order_and_completion(
        tmp_path: Path, settings: Settings, db: Database, hypervisors: Hypervisors,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "HoldResources", TaskKind(HoldResources, "hold"))
    port = free_port_pair()
    own = settings.model_copy(update={"temporal_address": f"127.0.0.1:{port}",
                                      "task_queue": f"restart-{uuid.uuid4().hex[:6]}"})
    db_file, log = tmp_path / "temporal.db", tmp_path / "temporal.log"
    resource = f"vm:restart-{uuid.uuid4().hex[:6]}"

    with _server(db_file, port, log) as server:
        client = TaskomaticClient(await _connect(own), own, db)
        async with _worker(client.temporal, own, hypervisors):
            holder = await client.submit("HoldResources", HoldRequest(names=[resource],
                                                                      hold=True))
            line = [await client.submit("HoldResources", HoldRequest(names=[resource]))
                    for _ in range(5)]
            after = await client.submit("HoldResources", HoldRequest(after=[line[-1].id]))
            for _ in range(100):
                if await _states(client, [holder, *line, after]) == (
                        ["running"] + ["waiting"] * 6):
                    break
                await asyncio.sleep(0.1)
            assert await _states(client, [holder, *line, after]) == ["running"] + ["waiting"] * 6
        # The worker is gone; now the server dies too, without a chance to flush anything.
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)

    with _server(db_file, port, log):
        client = TaskomaticClient(await _connect(own), own, db)
        handles = [client.task(h.id, "HoldResources") for h in (holder, *line, after)]
        async with _worker(client.temporal, own, hypervisors):
            await client.temporal.get_workflow_handle(holder.id).signal("finish")
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    ran = [r.ran_at for r in results]
    finished = [r.finished_at for r in results]
    for i in range(1, 6):  # holder, then the line in submission order, never overlapping
        assert ran[i] >= finished[i - 1]
    assert ran[6] >= finished[5]  # the prerequisite
    assert not ordering.queue(db, [h.id for h in handles])
