"""Cancelled tasks on the lab's real libvirtd hosts (issue 12): nothing is left half-done.

- case 2: a live migration (a 2 GiB SeaBIOS guest at 1 MiB/s, about 5 s) cancelled at different
  moments after its migrate step started: the task waits until the job has really ended (aborted,
  or completed first), only then decides where the VM is, and the inventory agrees with libvirt;
- case 4: ``host clear --stop-unmigratable`` cancelled while its first StopVm waits for a guest
  that ignores ACPI (SeaBIOS): the clear stops there and ends cancelled; the other VMs are left
  running and no further stop starts.

Every check of where a VM is asks libvirt. See lab_fixtures.py for the lab.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import force_host_state
from lab_fixtures import QemuLab
from temporalio.service import RPCError
from test_cancellation import (
    assert_consistent,
    at_step,
    ends_cancelled,
    still_running,
    task_exists,
    until,
)
from test_clear_host import fill, placement

from starter.client import TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    HostState,
    MigrateVmRequest,
    MigrationLimits,
    child_task_id,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

BIG_MIB = 2048
SEABIOS_MIB = 64
SLOW = MigrationLimits(bandwidth_mib_s=1, progress_timeout_seconds=120)


def used_memory_agrees(qemu_lab: QemuLab, db: Database) -> None:
    """Each lab host's used memory in the inventory is what libvirt runs or defines there."""
    for host in qemu_lab.hosts:
        defined = sum(d.maxMemory() // 1024 for d in qemu_lab.conn(host).listAllDomains())
        record = inventory.get_host(db, host.name)
        assert record is not None and record.used_memory_mib == defined, (
            f"{host.name}: inventory uses {record and record.used_memory_mib} MiB, "
            f"libvirt has {defined} MiB")


@pytest.mark.parametrize("after", [1.0, 3.0, 5.0])
async def test_a_cancelled_live_migration_leaves_the_vm_where_the_inventory_says(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, after: float) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    [name] = await fill(client, qemu_lab, source, 1, "cancel", memory_mib=BIG_MIB)
    move = await client.migrate_vm(MigrateVmRequest(name=name, to=dest.name, limits=SLOW))
    await at_step(move, f"migrate to {dest.name}")
    await asyncio.sleep(after)
    cancelled = time.monotonic()
    try:
        await client.cancel(move.id)
    except RPCError:  # the task had completed: the move was quicker than the cancel
        assert (await move.result()).host == dest.name
    else:
        await ends_cancelled(move)
    took = time.monotonic() - cancelled
    assert took < 30, f"the task ended {took:.1f}s after the cancel"
    assert await still_running(client, [move.id]) == []
    where = {h.name: d[name] for h in qemu_lab.hosts if name in (d := qemu_lab.domains(h))}
    assert len(where) == 1 and list(where.values()) == [True], where
    assert_consistent(qemu_lab, db, [name])
    placement(qemu_lab, db)
    used_memory_agrees(qemu_lab, db)


async def test_a_cancel_stops_a_clear_host_stopping_guests_that_ignore_acpi(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    src = qemu_lab.host(1)
    for host in qemu_lab.hosts[1:]:  # nowhere to go: every VM is unmigratable
        force_host_state(db, host.name, HostState.DOWN)
    names = await fill(client, qemu_lab, src, 3, "deaf", memory_mib=SEABIOS_MIB)
    clear = await client.clear_host(ClearHostRequest(host=src.name, stop_unmigratable=True,
                                                     stop_timeout_seconds=60))
    stops = [child_task_id(clear.id, "stop", name) for name in names]

    async def first_stop() -> str | None:
        for stop in stops:
            if await task_exists(client, stop):
                return stop
        return None

    first = await until(first_stop, "the first stop to start", seconds=120)
    await at_step(client.task(first, "StopVm"), "wait for shutoff")
    await asyncio.sleep(1.0)  # the guest ignores the request; the stop waits
    cancelled = time.monotonic()
    await client.cancel(clear.id)
    await ends_cancelled(clear, within=30)
    assert time.monotonic() - cancelled < 20
    with pytest.raises(TaskError):
        await client.task(first, "StopVm").result()
    assert [s for s in stops if await task_exists(client, s)] == [first]
    assert await still_running(client, [clear.id, first]) == []
    assert qemu_lab.domains(src) == dict.fromkeys(names, True)
    assert_consistent(qemu_lab, db, names)
    used_memory_agrees(qemu_lab, db)
    host = inventory.get_host(db, src.name)
    assert host is not None and host.state == HostState.MAINTENANCE_FAILED
