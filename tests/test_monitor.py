"""Hosts that stop answering: keepalive-less hangs bounded, the host monitor's transitions, the
inventory writes of the monitor and of libvirt events (test driver; the lab test with a stopped
libvirtd is tests/test_lab_monitor.py)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from helpers import app_error

from conftest import Lab
from starter.client import RequestError, TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.errors import ErrorType
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.connections import ConnectionLimits
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.hypervisor.events import Observed
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.inventory.monitor import lose_contact, observe_vm_state, regain_contact
from taskomatic.models import (
    ClearHostRequest,
    ContactChange,
    DomainSpec,
    HostSpec,
    HostState,
    RecordVmInput,
    ReserveCapacityInput,
    VmState,
)
from taskomatic.monitor import EventRecorder, HostMonitor
from taskomatic.states import HostTransition, check_transition


@pytest.mark.parametrize(("transition", "before", "after"), [
    (HostTransition.LOSE_CONTACT, HostState.UP, HostState.NON_RESPONSIVE),
    (HostTransition.REGAIN_CONTACT, HostState.NON_RESPONSIVE, HostState.UP),
    (HostTransition.ACTIVATE, HostState.NON_RESPONSIVE, HostState.UP),
    (HostTransition.MARK_DOWN, HostState.NON_RESPONSIVE, HostState.DOWN),
])
def test_contact_transitions(transition: HostTransition, before: HostState,
                             after: HostState) -> None:
    assert check_transition(transition, "h", before) == after


@pytest.mark.parametrize(("transition", "before"), [
    (HostTransition.LOSE_CONTACT, HostState.MAINTENANCE),
    (HostTransition.LOSE_CONTACT, HostState.DOWN),
    (HostTransition.REGAIN_CONTACT, HostState.DOWN),
    (HostTransition.ENTER_MAINTENANCE, HostState.NON_RESPONSIVE),
])
def test_contact_transitions_refused(transition: HostTransition, before: HostState) -> None:
    with pytest.raises(Exception, match=f"host 'h' is {before.value}") as caught:
        check_transition(transition, "h", before)
    assert app_error(caught.value)[1].type is ErrorType.INVALID_OPERATION


@pytest.fixture
def silent_uri(tmp_path: Path) -> Iterator[str]:
    """The URI of a "libvirtd" that accepts connections and never answers (as a stopped one
    does: the kernel accepts, nobody reads)."""
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    yield f"qemu+unix:///system?socket={path}"
    server.close()


def test_a_silent_host_fails_fast_and_holds_no_one_else(silent_uri: str, lab: Lab) -> None:
    hv = Hypervisors(ConnectionLimits(connect_timeout_seconds=1.0, calls_per_host=2,
                                      slot_wait_seconds=0.2))
    other = lab.host(1)
    started = time.monotonic()
    with pytest.raises(Exception) as first, hv.call("probe", silent_uri, "silent"):
        pass
    waited = time.monotonic() - started
    info = app_error(first.value)[1]
    assert info.type is ErrorType.HYPERVISOR_UNAVAILABLE and info.retryable
    assert info.host == "silent" and "no answer within 1 s" in info.message
    assert 0.9 < waited < 3
    # The open is still pending: later calls do not wait for it again.
    started = time.monotonic()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with hv.call("probe", silent_uri, "silent"):
                pass
        except Exception as err:
            errors.append(err)
    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 10
    assert {app_error(e)[1].type for e in errors} == {ErrorType.HYPERVISOR_UNAVAILABLE}
    assert any("still waiting for an answer" in app_error(e)[1].message for e in errors)
    # Another host answers as ever.
    with hv.call("list", other.uri, other.name) as conn:
        assert conn.listAllDomains() == []


def _vm(db: Database, host: str, name: str) -> None:
    task_id = f"task-{uuid.uuid4().hex[:10]}"
    inventory.reserve_capacity(db, ReserveCapacityInput(task_id=task_id, vm_name=name, vcpus=1,
                                                        memory_mib=64, host=host))
    inventory.record_vm(db, RecordVmInput(task_id=task_id, name=name, uuid=str(uuid.uuid4()),
                                          host=host, vcpus=1, memory_mib=64,
                                          state=VmState.RUNNING))


def _state(db: Database, vm: str) -> tuple[VmState, str | None]:
    found = inventory.get_vm(db, vm)
    assert found is not None
    return found.vm.state, found.vm.state_reason


def test_lose_and_regain_contact_leave_held_vms_to_their_task(db: Database, lab: Lab) -> None:
    host = lab.host(1)
    free, held = lab.vm_name("free"), lab.vm_name("held")
    _vm(db, host.name, free)
    _vm(db, host.name, held)
    holder = f"task-{uuid.uuid4().hex[:10]}"
    ordering.enqueue(db, holder, "StopVm", {f"vm:{held}": 1})
    try:
        change = lose_contact(db, host.name, "keepalive timed out")
        assert change.changed and change.state is HostState.NON_RESPONSIVE
        assert change.vms == [free]
        assert _state(db, free) == (VmState.UNKNOWN,
                                    f"host {host.name} non_responsive: keepalive timed out")
        assert _state(db, held) == (VmState.RUNNING, None)
        record = inventory.get_host(db, host.name)
        assert record is not None and record.state_reason == "keepalive timed out"
        assert not lose_contact(db, host.name, "again").changed  # idempotent
        # A task held VM is never written from what libvirt says; a free one is.
        assert not observe_vm_state(db, host.name, held, VmState.PAUSED)
        assert observe_vm_state(db, host.name, free, VmState.SHUTOFF)
        assert _state(db, free) == (VmState.SHUTOFF, None)
        assert not observe_vm_state(db, "elsewhere", free, VmState.RUNNING)  # not on that host
        back = regain_contact(db, host.name)
        assert back.changed and back.state is HostState.UP
        assert not regain_contact(db, host.name).changed
        record = inventory.get_host(db, host.name)
        assert record is not None and record.state_reason is None
    finally:
        ordering.release(db, holder)


def test_a_clear_of_a_non_responsive_host_says_what_it_cannot_do(db: Database,
                                                                 lab: Lab) -> None:
    host = lab.host(1)
    lose_contact(db, host.name, "no answer for 10 s")
    with pytest.raises(Exception) as caught:
        inventory.begin_maintenance(db, host.name)
    info = app_error(caught.value)[1]
    assert info.type is ErrorType.HOST_NOT_AVAILABLE and info.field == "host"
    assert "non_responsive (no answer for 10 s)" in info.message
    assert "cannot be moved" in info.message and "nothing was changed" in info.message
    record = inventory.get_host(db, host.name)
    assert record is not None and record.state is HostState.NON_RESPONSIVE


async def test_the_monitor_marks_a_silent_host_and_brings_it_back(
        db: Database, lab: Lab, host_dir: Path) -> None:
    # A host whose hypervisor cannot be reached (its test-driver file does not exist yet)...
    name = f"h{lab.prefix}-gone"
    uri = f"test://{(host_dir / f'{name}.xml').resolve()}"
    inventory.add_host(db, HostSpec(name=name, uri=uri, vcpus=4, memory_mib=4096))
    lab.hosts.append(HostSpec(name=name, uri=uri, vcpus=4, memory_mib=4096))  # down afterwards
    vm = lab.vm_name("on-gone")
    _vm(db, name, vm)
    hv = Hypervisors(ConnectionLimits(connect_timeout_seconds=1.0))
    monitor = HostMonitor(db, hv, interval_seconds=0.2, unresponsive_seconds=0.5)
    assert not any(c.host == name for c in await monitor.check())  # silent, not for long yet
    record = inventory.get_host(db, name)
    assert record is not None and record.state is HostState.UP
    changes: list[ContactChange] = []
    deadline = time.monotonic() + 5
    while not changes and time.monotonic() < deadline:
        changes = [c for c in await monitor.check() if c.host == name]
    assert changes and changes[0].state is HostState.NON_RESPONSIVE and changes[0].vms == [vm]
    record = inventory.get_host(db, name)
    assert record is not None and record.state is HostState.NON_RESPONSIVE
    assert record.state_reason is not None and "no answer for" in record.state_reason
    state, reason = _state(db, vm)
    assert state is VmState.UNKNOWN and reason is not None and name in reason
    # ... answers again: up, and its VMs' states are what libvirt says (no such domain there:
    # left unknown, for the reconciliation to report).
    write_test_host(host_dir, name, 4, 4096)
    changes = [c for c in await monitor.check() if c.host == name]
    assert changes and changes[0].state is HostState.UP
    record = inventory.get_host(db, name)
    assert record is not None and record.state is HostState.UP and record.state_reason is None
    assert _state(db, vm)[0] is VmState.UNKNOWN
    hv.close()


def _own_host(db: Database, lab: Lab, tmp_path: Path, label: str) -> HostSpec:
    """A registered test-driver host whose connections are the test's own (not the session
    worker's); it leaves service after the test, like the lab's."""
    name = f"h{lab.prefix}-{label}"
    spec = HostSpec(name=name, uri=write_test_host(tmp_path, name, 4, 4096), vcpus=4,
                    memory_mib=4096)
    inventory.add_host(db, spec)
    lab.hosts.append(spec)
    return spec


def _until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` held (polled every 10 ms); fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "not recorded in time"
        time.sleep(0.01)
    return time.monotonic() - started


def test_libvirt_events_reach_the_inventory_within_2_s(db: Database, lab: Lab,
                                                       tmp_path: Path) -> None:
    spec = _own_host(db, lab, tmp_path, "events")
    name = spec.name
    hv = Hypervisors()
    recorder = EventRecorder(db, hv)
    recorder.start()
    try:
        conn = hv.connection(spec.uri)
        free, held = lab.vm_name("free"), lab.vm_name("held")
        doms = {}
        for vm in (free, held):
            _vm(db, name, vm)
            found = inventory.get_vm(db, vm)
            assert found is not None
            doms[vm] = conn.defineXML(build_domain_xml(DomainSpec(
                host=name, uri=spec.uri, name=vm, uuid=found.vm.uuid, vcpus=1, memory_mib=64)))
            doms[vm].create()
        holder = f"task-{uuid.uuid4().hex[:10]}"
        ordering.enqueue(db, holder, "StopVm", {f"vm:{held}": 1})
        # Behind taskomatic's back: paused, resumed, crashed (destroyed), started again.
        for change, expected in (("suspend", VmState.PAUSED), ("resume", VmState.RUNNING),
                                 ("destroy", VmState.SHUTOFF), ("create", VmState.RUNNING)):
            getattr(doms[free], change)()
            getattr(doms[held], change)()
            _until(lambda e=expected: _state(db, free)[0] is e, 2.0)  # type: ignore[misc]
            assert _state(db, held)[0] is VmState.RUNNING  # its task owns it
        ordering.release(db, holder)
        doms[held].suspend()  # no task holds it any more: recorded
        _until(lambda: _state(db, held)[0] is VmState.PAUSED, 2.0)
        assert _state(db, free)[0] is VmState.RUNNING
    finally:
        recorder.stop()
        hv.close()


def test_events_skip_a_vm_a_task_holds(db: Database, lab: Lab, tmp_path: Path) -> None:
    spec = _own_host(db, lab, tmp_path, "held")
    name = spec.name
    hv = Hypervisors()
    recorder = EventRecorder(db, hv)
    conn = hv.connection(spec.uri)
    vm = lab.vm_name("held")
    _vm(db, name, vm)
    found = inventory.get_vm(db, vm)
    assert found is not None
    dom = conn.defineXML(build_domain_xml(DomainSpec(
        host=name, uri=spec.uri, name=vm, uuid=found.vm.uuid, vcpus=1, memory_mib=64)))
    dom.create()
    dom.suspend()
    holder = f"task-{uuid.uuid4().hex[:10]}"
    ordering.enqueue(db, holder, "StopVm", {f"vm:{vm}": 1})
    try:
        seen = Observed(spec.uri, "domain", vm, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                        time.monotonic())
        assert recorder.record(seen) == "unchanged"
        assert _state(db, vm)[0] is VmState.RUNNING
        ordering.release(db, holder)
        assert recorder.record(seen) == "recorded"
        assert _state(db, vm)[0] is VmState.PAUSED
        gone = Observed(spec.uri, "domain", "no-such-domain", 2, time.monotonic())
        assert recorder.record(gone) == "skipped"
        elsewhere = Observed("test:///nowhere.xml", "domain", vm, 2, time.monotonic())
        assert recorder.record(elsewhere) == "skipped"
    finally:
        ordering.release(db, holder)
        hv.close()


def test_pool_events_reach_the_inventory(db: Database, lab: Lab, tmp_path: Path) -> None:
    spec = _own_host(db, lab, tmp_path, "pools")
    name = spec.name
    pool = f"pool-{lab.prefix}"
    with db.transaction() as cur:  # recorded as a finished create would have
        cur.execute("INSERT INTO storage_pools (name, host_id, type, path, state)"
                    " SELECT %s, id, 'dir', %s, 'active' FROM hosts WHERE name = %s",
                    (pool, str(tmp_path / pool), name))
    hv = Hypervisors()
    recorder = EventRecorder(db, hv)
    recorder.start()
    try:
        conn = hv.connection(spec.uri)
        defined = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{pool}</name><target><path>{tmp_path / pool}</path>"
            "</target></pool>")
        defined.create()

        def pool_state() -> str:
            found = inventory.get_pool(db, pool)
            assert found is not None
            return str(found.pool.state)
        defined.destroy()  # stopped behind taskomatic's back
        _until(lambda: pool_state() == "inactive", 2.0)
        defined.create()
        _until(lambda: pool_state() == "active", 2.0)
    finally:
        recorder.stop()
        hv.close()
        with db.transaction() as cur:
            cur.execute("DELETE FROM storage_pools WHERE name = %s", (pool,))


async def test_a_clear_of_a_non_responsive_host_is_refused_at_submission(
        client: TaskomaticClient, db: Database, lab: Lab) -> None:
    host = lab.host(1)
    lose_contact(db, host.name, "keepalive timed out")
    for dry_run in (True, False):
        with pytest.raises(RequestError) as refused:
            await client.clear_host(ClearHostRequest(host=host.name, dry_run=dry_run))
        assert refused.value.field == "host"
        assert "non_responsive (keepalive timed out)" in refused.value.reason
        assert "clear it then" in refused.value.reason
