"""The lifecycle tasks end to end: real Temporal, real PostgreSQL, real libvirt test driver.

Failures after ``define`` are injected at the activity boundary: a worker on its own task queue
runs every real activity except ``start_domain``, which is replaced by one that fails or hangs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import faulty_client, force_host_state
from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from conftest import Lab
from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    DomainRef,
    DomainReport,
    HostSpec,
    HostState,
    StartVmRequest,
    StopVmRequest,
)
from taskomatic.settings import Settings

pytestmark = pytest.mark.asyncio


def _usage(db: Database, host: str) -> tuple[int, int, int]:
    h = inventory.get_host(db, host)
    assert h is not None
    return h.used_vcpus + h.reserved_vcpus, h.used_memory_mib + h.reserved_memory_mib, h.vm_count


class Gate:
    """Lets a test know when the hanging activity has begun."""

    def __init__(self) -> None:
        self.entered = threading.Event()


@pytest.fixture
async def hanging_start(temporal_env: WorkflowEnvironment, settings: Settings,
                        hypervisors: Hypervisors, db: Database
                        ) -> AsyncIterator[tuple[TaskomaticClient, Gate]]:
    gate = Gate()

    @activity.defn(name="start_domain")
    def start_domain(ref: DomainRef) -> DomainReport:
        gate.entered.set()
        while True:  # until the task is cancelled (learned through the heartbeat)
            activity.heartbeat()
            if activity.is_cancelled():
                raise asyncio.CancelledError()
            threading.Event().wait(0.05)

    async for client in faulty_client(temporal_env, settings, hypervisors, db, start_domain):
        yield client, gate


# --- happy paths and idempotent no-ops -------------------------------------------------------


async def test_full_lifecycle_reports_each_step(client: TaskomaticClient, lab: Lab,
                                                db: Database) -> None:
    host = lab.host(vcpus=4, memory_mib=4096)
    name = lab.vm_name("life")
    created = await (await client.create_vm(CreateVmRequest(
        name=name, vcpus=2, memory_mib=1024, host=host.name, start=True))).result()
    assert (created.state, created.host, created.notes) == ("running", host.name,
                                                            ["defined", "started"])
    assert lab.domains(host) == {name: True}
    assert _usage(db, host.name) == (2, 1024, 1)

    again = await (await client.start_vm(StartVmRequest(name=name))).result()
    assert again.notes == ["already running"]

    stopped = await (await client.stop_vm(StopVmRequest(name=name, timeout_seconds=5))).result()
    assert stopped.state == "shutoff" and lab.domains(host) == {name: False}
    stopped = await (await client.stop_vm(StopVmRequest(name=name, force=True))).result()
    assert stopped.notes == ["already shut off"]
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.state == "shutoff"

    await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    assert lab.domains(host) == {}
    assert inventory.get_vm(db, name) is None
    assert _usage(db, host.name) == (0, 0, 0)


async def test_destroy_of_a_domain_libvirt_lost_is_a_reported_noop(
        client: TaskomaticClient, lab: Lab, hypervisors: Hypervisors) -> None:
    host = lab.host()
    name = lab.vm_name("lost")
    await (await client.create_vm(CreateVmRequest(name=name, host=host.name))).result()
    hypervisors.connection(host.uri).lookupByName(name).undefine()  # vanished behind our back
    result = await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    assert result.notes == ["absent; nothing to power off", "already absent",
                            "removed from inventory"]


async def test_placement_picks_the_least_loaded_host(client: TaskomaticClient, lab: Lab,
                                                     db: Database) -> None:
    for other in inventory.list_hosts(db):
        force_host_state(db, other.name, HostState.DOWN)
    busy, idle = lab.host(1), lab.host(2)
    await (await client.create_vm(CreateVmRequest(name=lab.vm_name("first"), memory_mib=2048,
                                                  host=busy.name))).result()
    placed = await (await client.create_vm(CreateVmRequest(name=lab.vm_name("second")))).result()
    assert placed.host == idle.name


# --- compensation ----------------------------------------------------------------------------


async def test_failure_after_define_leaves_nothing_behind(failing_start_client: TaskomaticClient,
                                                          lab: Lab, db: Database) -> None:
    host = lab.host()
    name = lab.vm_name("doomed")
    task = await failing_start_client.create_vm(CreateVmRequest(name=name, host=host.name,
                                                                start=True))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert (failure.step, failure.error_type, failure.vm, failure.host) == (
        "start domain", "HypervisorError", name, host.name)
    assert "injected" in failure.message
    assert failure.compensated == ["undefine domain", "release capacity"]
    assert lab.domains(host) == {}
    assert inventory.get_vm(db, name) is None
    assert _usage(db, host.name) == (0, 0, 0)


async def test_cancelled_create_is_undone(hanging_start: tuple[TaskomaticClient, Gate], lab: Lab,
                                          db: Database) -> None:
    client, gate = hanging_start
    host = lab.host()
    name = lab.vm_name("cancel")
    task = await client.create_vm(CreateVmRequest(name=name, host=host.name, start=True))
    assert await asyncio.to_thread(gate.entered.wait, 20)
    assert lab.domains(host) == {name: False}  # defined, start hanging
    await task.cancel()
    status = None
    for _ in range(100):
        status = await task.describe()
        if status.state != "running":
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.state == "cancelled"
    assert lab.domains(host) == {}
    assert _usage(db, host.name) == (0, 0, 0)


async def test_unreachable_hypervisor_fails_retryable_and_releases(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    spec = HostSpec(name=f"gone-{lab.prefix}", uri=f"qemu+tcp://127.0.0.1:1/{lab.prefix}",
                    vcpus=16, memory_mib=32768)
    inventory.add_host(db, spec)
    try:
        task = await client.create_vm(CreateVmRequest(name=lab.vm_name("nohv"), host=spec.name))
        with pytest.raises(TaskError) as caught:
            await task.result()
        failure = caught.value.failure
        assert (failure.step, failure.error_type, failure.retryable) == (
            "define domain", "HypervisorUnavailable", True)
        assert failure.libvirt_code == 38 and spec.name in failure.message
        # The host cannot be reached to undo the define either; that is said, not hidden.
        assert failure.compensated == ["release capacity"]
        assert failure.compensation_failed == ["undefine domain"]
        assert _usage(db, spec.name) == (0, 0, 0)
    finally:
        force_host_state(db, spec.name, HostState.DOWN)


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_creates_never_overcommit(client: TaskomaticClient, lab: Lab,
                                                   db: Database) -> None:
    host = lab.host(vcpus=4, memory_mib=64 * 1024)
    tasks = [await client.create_vm(CreateVmRequest(name=lab.vm_name(f"c{i}"), host=host.name))
             for i in range(10)]
    outcomes = await asyncio.gather(*(t.result() for t in tasks), return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, TaskError)]
    assert (len(won), len(lost)) == (4, 6)
    assert {e.failure.error_type for e in lost} == {"NoCapacity"}
    assert len(lab.domains(host)) == 4
    assert _usage(db, host.name) == (4, 2048, 4)


# --- refused requests leave nothing behind ---------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({"name": "web 1"}, "name"),
    ({"name": "a<b>"}, "name"),
    ({"name": "x", "vcpus": 0}, "vcpus"),
    ({"name": "x", "vcpus": -2}, "vcpus"),
    ({"name": "x", "memory_mib": 10**12}, "memory_mib"),
    ({"name": "x", "host": "no such"}, "host"),
])
async def test_invalid_create_is_refused_by_field(fields: dict[str, Any], field: str) -> None:
    from starter.client import validated

    with pytest.raises(RequestError) as caught:
        validated(CreateVmRequest, **fields)
    assert caught.value.field == field


async def test_create_on_unknown_host_or_duplicate_name_is_refused(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    host = lab.host()
    name = lab.vm_name("dup")
    with pytest.raises(RequestError) as unknown:
        await client.create_vm(CreateVmRequest(name=name, host=f"nope-{lab.prefix}"))
    assert unknown.value.field == "host"
    await (await client.create_vm(CreateVmRequest(name=name, host=host.name))).result()
    with pytest.raises(RequestError) as dup:
        await client.create_vm(CreateVmRequest(name=name, host=host.name))
    assert dup.value.field == "name" and host.name in str(dup.value)
    with pytest.raises(RequestError) as missing:
        await client.start_vm(StartVmRequest(name=lab.vm_name("never")))
    assert missing.value.field == "name"
    assert list(lab.domains(host)) == [name]
    assert _usage(db, host.name) == (1, 512, 1)


async def test_workflow_refuses_duplicate_even_without_the_precheck(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    """Two creates of one name racing past the advisory check, and past ordering (which would
    otherwise run them one after the other): the plan phase stops one."""
    host = lab.host()
    name = lab.vm_name("race")
    req = CreateVmRequest(name=name, host=host.name, ordered=False)
    first = await client.submit("CreateVm", req)
    second = await client.submit("CreateVm", req)
    outcomes = await asyncio.gather(first.result(), second.result(), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, TaskError)]
    assert len(errors) == 1 and errors[0].failure.field == "name"
    assert errors[0].failure.error_type == "DuplicateVm"
    assert list(lab.domains(host)) == [name]
    assert _usage(db, host.name) == (1, 512, 1)
