"""The randomized fault test on the lab (issue 12): a clear-host of 12 SeaBIOS guests over the
lab's three real libvirtd hosts (live migrations, slowed by a bandwidth cap of 1 MiB/s), run by
a worker process (``python -P -m worker``), disturbed at a seeded random point by one of
``LAB_FAULT_KINDS``: the ClearHost cancelled, the worker process killed with SIGKILL (then a new
one started), or a destination's libvirtd killed with SIGKILL (started again once the tasks
ended, then a Reconcile). Afterwards every VM must be on exactly one host, as it ran before,
with the inventory, the hosts' capacity, the reservations, the claims and the tasks agreeing
with libvirt (``bench.fault_checks``); tests/test_fault_runs.py is the same on test-driver hosts.

Quick by default: ``TASKOMATIC_LAB_FAULT_RUNS`` runs of each kind (2: one striking while a
migration job runs, one after a switch-over). The long mode is the same test with more runs, or
``python -m bench.faults --lab --runs N`` on a private stack and lab. ``TASKOMATIC_FAULT_SEED``
picks the plans (12 by default).
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator

import pytest
from helpers import only_hosts_up
from lab_fixtures import QemuLab
from temporalio.testing import WorkflowEnvironment

from bench.fault_lab import LAB_SHAPE, LabHosts, follow_migrations
from bench.fault_process import WorkerProcess
from bench.faults import LAB_FAULT_KINDS, FaultRig, run_kind
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

RUNS = int(os.environ.get("TASKOMATIC_LAB_FAULT_RUNS", "2"))
SEED = int(os.environ.get("TASKOMATIC_FAULT_SEED", "12"))


@pytest.fixture(scope="module")
async def lab_rig(qemu_lab_session: QemuLab, temporal_env: WorkflowEnvironment,
                  settings: Settings, db: Database,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultRig]:
    """The runs' own queue and worker process on the session's lab, its hosts the only ones in
    service; the rig's own libvirt connections for the checks. The worker's log and the
    histories of stuck tasks go to a temporary directory named in the report."""
    tmp = tmp_path_factory.mktemp("lab-faults")
    own = settings.model_copy(update={
        "temporal_address": temporal_env.client.service_client.config.target_host})
    hv = Hypervisors()
    hosts = LabHosts(db, hv, qemu_lab_session.state)
    try:
        with only_hosts_up(db, [h.name for h in qemu_lab_session.hosts]):
            async with FaultRig(temporal_env.client, own, db, hv, hosts, LAB_SHAPE,
                                evidence_dir=tmp / "evidence",
                                make_worker=lambda s: WorkerProcess(s, tmp / "worker.log"),
                                follow=functools.partial(follow_migrations, hv, db)) as rig:
                yield rig
    finally:
        qemu_lab_session.clear()
        qemu_lab_session.set_in_service(False)
        hv.close()


@pytest.mark.parametrize("kind", LAB_FAULT_KINDS)
async def test_lab_clear_host_faults_leave_libvirt_and_inventory_agreeing(
        lab_rig: FaultRig, kind: str) -> None:
    # The first run of each kind strikes while a migration job runs, the next after a
    # switch-over, the third anywhere.
    report = await run_kind(lab_rig, kind, LAB_FAULT_KINDS, RUNS, SEED)
    print(report.summary())
    assert sum(r.landed for r in report.runs) >= (RUNS + 1) // 2, report.summary()
    assert not report.violations, report.summary()
