"""The worker's metrics, /healthz and /readyz (README "Seeing the worker")."""

from __future__ import annotations

import asyncio
import json
import socket

from prometheus_client import REGISTRY
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.client import TaskomaticClient
from taskomatic.health import HealthServer
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings
from taskomatic.temporal import connect_temporal, sdk_runtime
from worker import liveness_checks, readiness_checks


@activity.defn
async def _nothing() -> None:
    pass


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_task_is_counted_and_its_steps_timed(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host(1)
    before = (_sample("taskomatic_tasks_started_total", kind="CreateVm"),
              _sample("taskomatic_tasks_ended_total", kind="CreateVm", outcome="complete"),
              _sample("taskomatic_step_duration_seconds_count", activity="define_domain",
                      outcome="complete"),
              _sample("taskomatic_placement_duration_seconds_count"))
    await (await client.create_vm(CreateVmRequest(name=lab.vm_name("counted"),
                                                  host=host.name))).result()
    after = (_sample("taskomatic_tasks_started_total", kind="CreateVm"),
             _sample("taskomatic_tasks_ended_total", kind="CreateVm", outcome="complete"),
             _sample("taskomatic_step_duration_seconds_count", activity="define_domain",
                     outcome="complete"),
             _sample("taskomatic_placement_duration_seconds_count"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


async def test_health_and_readiness(temporal_env: WorkflowEnvironment, worker: Worker,
                                    db: Database) -> None:
    server = HealthServer("127.0.0.1:0", liveness_checks(),
                          readiness_checks(temporal_env.client, [worker], db))
    await server.start()
    try:
        status, body = await _get(server.port, "/healthz")
        assert status == 200
        assert json.loads(body) == {"ok": True, "checks": {"libvirt_event_loop": "ok"}}
        status, body = await _get(server.port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"] == {"temporal": "ok", "pollers": "ok",
                                              "database": "ok"}
        status, body = await _get(server.port, "/metrics")
        assert status == 200 and b"taskomatic_tasks_started_total" in body
        assert b"taskomatic_inventory_pool_wait_seconds_bucket" in body
        assert (await _get(server.port, "/nowhere"))[0] == 404
    finally:
        await server.stop()


async def test_not_ready_names_what_is_wrong(temporal_env: WorkflowEnvironment,
                                             worker: Worker) -> None:
    lost = Database("postgresql://postgres@127.0.0.1:1/none", max_connections=1)
    idle = Worker(temporal_env.client, task_queue="never-started",
                  activities=[_nothing])  # never run: no pollers
    server = HealthServer("127.0.0.1:0", liveness_checks(),
                          readiness_checks(temporal_env.client, [worker, idle], lost))
    await server.start()
    try:
        status, body = await _get(server.port, "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503 and not json.loads(body)["ok"]
        assert checks["temporal"] == "ok"
        assert checks["pollers"] == "not polling never-started"
        assert checks["database"] != "ok"
    finally:
        await server.stop()


async def test_the_sdk_runtime_serves_temporal_metrics(temporal_env: WorkflowEnvironment,
                                                       settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    own = settings.model_copy(update={
        "temporal_metrics_address": f"127.0.0.1:{port}",
        "temporal_address": temporal_env.client.service_client.config.target_host})
    runtime = sdk_runtime(own)
    assert runtime is not None
    client = await connect_temporal(own, runtime)
    await client.count_workflows()
    status, body = 0, b""
    for _ in range(50):  # the exporter publishes what the client recorded shortly after
        status, body = await _get(port, "/metrics")
        if b"temporal_request" in body:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and b"temporal_request" in body
    assert sdk_runtime(settings.model_copy(update={"temporal_metrics_address": ""})) is None
