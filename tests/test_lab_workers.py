"""Many workers: three worker processes (``python -P -m worker``, the real entry point) share
one task queue on the lab's real libvirtd hosts; the one running a live migration of a
clear-host is killed with SIGKILL in the middle of it, and the two others finish the clear with
every invariant intact, checked against libvirt (``bench.fault_checks``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lab_fixtures import QemuLab
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from test_clear_host import fill
from worker_procs import WorkerProcesses, worker_fleet

from bench.fault_checks import check_run, libvirt_view
from starter.client import TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.models import ClearHostRequest, HostState
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

WORKERS = 3


@pytest.fixture
async def fleet(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
                tmp_path: Path) -> AsyncIterator[tuple[TaskomaticClient, WorkerProcesses]]:
    # 1 MiB/s: a 2 GiB guest's move lasts ~5 s, a window to kill its worker in.
    with worker_fleet(settings, temporal_env, db, tmp_path, "fleet", WORKERS,
                      MIGRATION_BANDWIDTH_MIB_S="1") as fleet:
        yield fleet


async def _migrating_worker(temporal: Client, clear_id: str, timeout: float = 60.0) -> int:
    """The pid of a worker running a ``migrate_domain`` step of the clear's children (from the
    pending activity's worker identity, ``<pid>@<hostname>``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = await temporal.get_workflow_handle(clear_id).describe()
        for child in desc.raw_description.pending_children:
            move = await temporal.get_workflow_handle(child.workflow_id).describe()
            for act in move.raw_description.pending_activities:
                if act.activity_type.name == "migrate_domain" and act.last_worker_identity:
                    return int(act.last_worker_identity.partition("@")[0])
        await asyncio.sleep(0.2)
    raise AssertionError("no migration of the clear started in time")


async def test_a_worker_killed_mid_clear_host_is_covered_by_the_others(
        fleet: tuple[TaskomaticClient, WorkerProcesses], qemu_lab: QemuLab,
        db: Database) -> None:
    client, procs = fleet
    source = qemu_lab.host(1)
    vms = await asyncio.wait_for(fill(client, qemu_lab, source, 3, "fleet", memory_mib=2048),
                                 180)
    view = libvirt_view(qemu_lab.hv, qemu_lab.hosts)
    before = {name: view[name][0] for name in vms}
    handle = await client.clear_host(ClearHostRequest(host=source.name))
    pid = await _migrating_worker(client.temporal, handle.id)
    victim = next(p for p in procs.procs if p.pid == pid)
    procs.kill(victim)
    result = await asyncio.wait_for(client.host_result(handle), 300)
    assert result.state is HostState.MAINTENANCE and not result.failed, procs.logs()
    assert {o.vm for o in result.outcomes} == set(vms)
    assert sum(p.poll() is None for p in procs.procs) == WORKERS - 1
    violations = check_run(db, qemu_lab.hv, qemu_lab.hosts, before, handle.id)
    assert violations == [], "\n".join(map(str, violations))
    assert not any(name in qemu_lab.domains(source) for name in vms)
