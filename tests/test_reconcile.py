"""The reconciliation safety net on real libvirt test-driver hosts, PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from conftest import Lab
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    DomainSpec,
    ReconcileReport,
    ReconcileRequest,
    StartVmRequest,
    VmState,
)

pytestmark = pytest.mark.asyncio


async def test_reconcile_repairs_what_it_safely_can_and_reports_the_rest(
        client: TaskomaticClient, lab: Lab, db: Database, hypervisors: Hypervisors) -> None:
    host = lab.host(vcpus=8)
    drifted, waiting, vanished = (lab.vm_name(x) for x in ("drift", "wait", "gone"))
    for name in (drifted, waiting, vanished):
        await (await client.create_vm(CreateVmRequest(name=name, host=host.name,
                                                      start=True))).result()
    conn = hypervisors.connection(host.uri)
    conn.lookupByName(drifted).destroy()  # behind taskomatic's back: now shut off
    conn.lookupByName(vanished).destroy()
    conn.lookupByName(vanished).undefine()
    stray = lab.vm_name("stray")
    conn.defineXML(build_domain_xml(DomainSpec(host=host.name, uri=host.uri, name=stray,
                                         uuid=str(uuid.uuid4()), vcpus=1, memory_mib=64)))
    # A task that ended long ago without releasing its place in line (or that never started),
    # with a real task queued behind it; and capacity a dead task still holds.
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    ordering.enqueue(db, ghost, "StartVm", {f"vm:{waiting}": 1})
    with db.transaction() as cur:
        cur.execute("UPDATE claims SET claimed_at = now() - interval '1 hour' WHERE task_id = %s",
                    (ghost,))
        cur.execute("INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib,"
                    " created_at) SELECT %s, id, %s, 2, 256, now() - interval '1 hour'"
                    " FROM hosts WHERE name = %s", (ghost + "-r", lab.vm_name("res"), host.name))
    queued = await client.start_vm(StartVmRequest(name=waiting))
    await asyncio.sleep(1)
    assert (await queued.describe()).state == "waiting"

    handle = await client.submit("Reconcile", ReconcileRequest(grace_seconds=30))
    report: ReconcileReport = await handle.result()
    mine = {(f.kind, f.subject): f.repaired for f in report.findings
            if f.subject in (drifted, vanished, stray, ghost, ghost + "-r")}
    assert mine == {("state_drift", drifted): True, ("missing_domain", vanished): False,
                    ("unmanaged_domain", stray): False, ("stale_claim", ghost): True,
                    ("stale_reservation", ghost + "-r"): True}
    await asyncio.wait_for(queued.result(), 10)  # woken by the repair, not by its own watcher
    assert inventory.get_vm(db, drifted).vm.state == VmState.SHUTOFF  # type: ignore[union-attr]
    assert inventory.get_vm(db, vanished).vm.state == VmState.UNKNOWN  # type: ignore[union-attr]
    h = inventory.get_host(db, host.name)
    assert h is not None and h.reserved_vcpus == 0

    again: ReconcileReport = await (await client.submit(
        "Reconcile", ReconcileRequest(grace_seconds=30))).result()
    assert {(f.kind, f.subject) for f in again.findings if f.subject in (
        drifted, vanished, stray, ghost)} == {("missing_domain", vanished),
                                              ("unmanaged_domain", stray)}
    conn.lookupByName(stray).undefine()
