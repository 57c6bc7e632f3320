"""The randomized fault test (issue 12): a clear-host of 12 VMs over three test-driver hosts,
disturbed at a seeded random point, must leave every VM on exactly one host, as it ran before,
with the inventory, the hosts' capacity, the reservations, the claims and the tasks agreeing
with libvirt (``bench.faults``, ``bench.fault_checks``).

Quick by default: ``TASKOMATIC_FAULT_RUNS`` runs of each fault kind (2). The long mode is the same
test with more runs (``TASKOMATIC_FAULT_RUNS=25`` is 100 runs), or ``python -m bench.faults
--runs 100`` on a private stack. ``TASKOMATIC_FAULT_SEED`` picks the plans (12 by default, so the
quick mode's fault points are the same on every machine); a failing run is replayed with ``python
-m bench.faults --seed S --start I --runs 1 --kinds K`` (its seed and index are in the report).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import only_hosts_up
from temporalio.testing import WorkflowEnvironment

from bench.faults import FAULT_KINDS, FaultRig, Shape, TestDriverHosts, run_kind
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.settings import Settings

pytestmark = pytest.mark.asyncio

RUNS = int(os.environ.get("TASKOMATIC_FAULT_RUNS", "2"))
SEED = int(os.environ.get("TASKOMATIC_FAULT_SEED", "12"))


@pytest.fixture(scope="module")
async def rig(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
              hypervisors: Hypervisors, host_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultRig]:
    """The runs' own queue and worker, on the session's hypervisor connections (the Reconcile
    of a run then sees the same test-driver hosts); only the runs' hosts in service. The
    histories of stuck tasks go to a temporary directory named in the report."""
    shape = Shape()
    hosts = TestDriverHosts(db, hypervisors, host_dir / "faults", shape.hosts, room=shape.vms)
    with only_hosts_up(db, []):
        async with FaultRig(temporal_env.client, settings, db, hypervisors, hosts, shape,
                            evidence_dir=tmp_path_factory.mktemp("fault-evidence")) as the_rig:
            yield the_rig


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_clear_host_faults_leave_libvirt_and_inventory_agreeing(
        rig: FaultRig, kind: str) -> None:
    report = await run_kind(rig, kind, FAULT_KINDS, RUNS, SEED)
    print(report.summary())
    assert sum(r.landed for r in report.runs) >= (RUNS + 1) // 2, report.summary()
    assert not report.violations, report.summary()
