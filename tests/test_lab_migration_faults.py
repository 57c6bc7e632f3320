"""A migration step's outcome is the hypervisor's, on the lab's real libvirtd hosts (issue 12).

- case 2: a cancelled live migration is aborted within about two seconds of the cancel (the
  worker sends heartbeats, whose answers carry the cancel, every second) and the VM stays on its
  source; a cancel while watching an earlier attempt's job aborts it and waits until it has
  really ended;
- case 6: a worker that stops does not abort the job: it runs on, and the next attempt (another
  worker) watches it to its end instead of migrating the VM a second time;
- case 11: a step that watched a job it did not start (another worker's, or an earlier attempt's
  on its own worker) and saw it fail raises ``MigrationFailed`` — with libvirt's error when its
  worker ran the call — never "done";
- case 5: with one destination's libvirtd killed, a migration tries another host, and where the
  VM is (libvirt) and what the inventory says agree.

Every check of where a VM is asks libvirt. See lab_fixtures.py for the lab.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt
import pytest
from lab_fixtures import QemuLab
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from test_clear_host import fill, placement
from test_migration import reservations

from activities.migration import MigrationActivities
from lab.hosts import daemon_argv
from lab.models import LabHost
from lab.state import pid_alive, read_pid, save_state
from starter.client import TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.hypervisor.jobs import migration_flags
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ConfirmMoveInput,
    HostRef,
    MigrateDomainInput,
    MigrateVmRequest,
    MigrationLimits,
    MigrationReport,
    VmState,
)
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

BIG_MIB = 2048  # a 2 GiB SeaBIOS guest at 1 MiB/s migrates in about 5.4 s: time to interfere
SLOW = MigrationLimits(bandwidth_mib_s=1, progress_timeout_seconds=120)


# --- looking at libvirt ---------------------------------------------------------------------


async def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``check`` (in a thread: it may call libvirt) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


def _job(lab: QemuLab, host: LabHost, name: str) -> tuple[bool, int]:
    """Whether ``name`` has a job on ``host`` (a migration), and the bytes it has sent."""
    try:
        dom = lab.conn(host).lookupByName(name)
        running = dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        return running, int(dom.jobStats().get("data_processed", 0)) if running else 0
    except libvirt.libvirtError:
        return False, 0


def _where(lab: QemuLab, name: str, hosts: list[LabHost] | None = None) -> dict[str, bool]:
    """host → running, for every lab host (of ``hosts``) whose libvirtd defines ``name``."""
    return {h.name: d[name] for h in hosts or lab.hosts if name in (d := lab.domains(h))}


def _ref(host: LabHost) -> HostRef:
    return HostRef(name=host.name, uri=host.uri, migration_uri=host.migration_uri)


def _big_vm(lab: QemuLab, host: LabHost, label: str) -> str:
    spec = lab.seabios_spec(host, label).model_copy(update={"memory_mib": BIG_MIB})
    lab.conn(host).defineXML(build_domain_xml(spec)).create()
    return spec.name


def _earlier_attempt(lab: QemuLab, inp: MigrateDomainInput) -> dict[str, Any]:
    """Start the migration as another worker's attempt would: its own connection, in a thread.
    The returned dict gets ``error`` (libvirt's message) or ``done`` when the call returns."""
    out: dict[str, Any] = {}

    def run() -> None:
        conn = libvirt.open(inp.source.uri)
        try:
            flags, params = migration_flags(inp, live=True)
            conn.lookupByName(inp.name).migrateToURI3(inp.destination.uri, params, flags)
            out["done"] = True
        except libvirt.libvirtError as err:
            out["error"] = err.get_error_message()
        finally:
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return out


def _kill_incoming_qemu(host: LabHost, name: str) -> None:
    """Kill the QEMU that receives ``name`` on ``host``: the job fails with libvirt's error."""
    pid = read_pid(host.dir / "run" / "qemu" / f"{name}.pid")
    assert pid is not None and pid_alive(pid)
    os.kill(pid, signal.SIGKILL)


def _moves(hv: Hypervisors, db: Database, settings: Settings,
           temporal_env: WorkflowEnvironment) -> MigrationActivities:
    """The migration activities of one worker (each call: a worker of its own)."""
    return MigrationActivities(hv, db, settings, temporal_env.client)


def _attempt(moves: MigrationActivities, inp: MigrateDomainInput
             ) -> tuple[ActivityEnvironment, asyncio.Future[MigrationReport], list[Any]]:
    """Run ``migrate_domain`` as one attempt; its heartbeats are collected."""
    env, beats = ActivityEnvironment(), list[Any]()
    env.on_heartbeat = beats.append
    return env, asyncio.ensure_future(env.run(moves.migrate_domain, inp)), beats


# --- case 2: a cancel is heard within seconds and aborts the job ----------------------------


async def _heartbeats(client: TaskomaticClient, task_id: str, seconds: float) -> list[float]:
    """When the server recorded the migrate step's heartbeats, over ``seconds`` (epoch s)."""
    handle = client.temporal.get_workflow_handle(task_id)
    seen: set[float] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        desc = await handle.describe()
        for pending in desc.raw_description.pending_activities:
            if (pending.activity_type.name == "migrate_domain"
                    and pending.last_heartbeat_time.seconds):
                seen.add(pending.last_heartbeat_time.ToDatetime().timestamp())
        await asyncio.sleep(0.1)
    return sorted(seen)


async def test_a_cancelled_live_migration_is_aborted_and_the_vm_stays_on_its_source(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    [name] = await fill(client, qemu_lab, source, 1, "cancel", memory_mib=BIG_MIB)
    handle = await client.migrate_vm(MigrateVmRequest(name=name, to=dest.name, limits=SLOW))
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)
    await asyncio.to_thread(qemu_lab.cut_link, dest)  # held up: it cannot finish before a cancel
    try:
        beats = await _heartbeats(client, handle.id, 4.5)
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert len(beats) >= 3 and max(gaps) < 1.7, f"heartbeats {gaps}: a cancel would wait"
        cancelled = time.monotonic()
        await client.cancel(handle.id)
        await _until("the job has ended", lambda: not _job(qemu_lab, source, name)[0], 30)
        heard = time.monotonic() - cancelled
    finally:
        await asyncio.to_thread(qemu_lab.restore_link, dest)
    with pytest.raises(TaskError):
        await asyncio.wait_for(handle.result(), 120)

    assert heard < 2.5, f"the job ran on {heard:.1f}s after the cancel"
    await _until("the destination let go", lambda: name not in qemu_lab.domains(dest), 10)
    assert _where(qemu_lab, name) == {source.name: True}
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.host == source.name
    assert reservations(db, qemu_lab.vm_name("")) == []


async def test_a_cancel_while_watching_an_earlier_attempts_job_waits_until_it_ended(
        qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    name = await asyncio.to_thread(_big_vm, qemu_lab, source, "resumecancel")
    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest), limits=SLOW)
    earlier = _earlier_attempt(qemu_lab, inp)
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)

    env, run, beats = _attempt(_moves(qemu_lab.hv, db, settings, temporal_env), inp)
    await _until("the attempt watches the job", lambda: len(beats) > 0)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 30)
    assert not _job(qemu_lab, source, name)[0], "the step ended before its job"
    assert "aborted" in await _result(earlier)
    await _until("the destination let go", lambda: _where(qemu_lab, name) == {source.name: True})


async def _result(attempt: dict[str, Any]) -> str:
    await _until("the earlier attempt's call returned", lambda: bool(attempt), 30)
    return str(attempt.get("error", "done"))


# --- case 6: a stopping worker leaves the job to the next attempt ---------------------------


async def test_a_stopping_worker_lets_the_job_run_on_for_the_next_attempt_to_watch(
        qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    name = await asyncio.to_thread(_big_vm, qemu_lab, source, "drain")
    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest), limits=SLOW)
    env, first, beats = _attempt(_moves(qemu_lab.hv, db, settings, temporal_env), inp)
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)
    await asyncio.to_thread(qemu_lab.cut_link, dest)  # the job is held up until we let it go
    try:
        env.worker_shutdown()  # the drain: the step goes on, heartbeating
        seen = len(beats)
        await asyncio.sleep(2.5)
        assert not first.done() and len(beats) > seen
        env.cancel(ActivityCancellationDetails(worker_shutdown=True))  # the drain time is up
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, 10)
        assert _job(qemu_lab, source, name)[0], "the stopping worker aborted the job"

        _, second, _ = _attempt(_moves(Hypervisors(), db, settings, temporal_env), inp)
        await asyncio.sleep(1.5)
        assert not second.done()
    finally:
        await asyncio.to_thread(qemu_lab.restore_link, dest)
    report = await asyncio.wait_for(second, 120)
    assert report.changed and report.mode == "live"
    assert "resumed watching a running job" in report.detail
    assert _where(qemu_lab, name) == {dest.name: True}


async def test_a_job_left_running_to_another_host_is_stopped_before_moving_elsewhere(
        qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    """An attempt at another host that the task gave up on left its job running: the attempt at
    this host does not watch it (the VM would land where the task released its room), it aborts
    it and migrates the VM here, once."""
    source, given_up, dest = qemu_lab.host(1), qemu_lab.host(3), qemu_lab.host(2)
    name = await asyncio.to_thread(_big_vm, qemu_lab, source, "elsewhere")
    earlier = _earlier_attempt(qemu_lab, MigrateDomainInput(
        name=name, source=_ref(source), destination=_ref(given_up), limits=SLOW))
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)

    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest),
                             limits=MigrationLimits())
    _, run, _ = _attempt(_moves(qemu_lab.hv, db, settings, temporal_env), inp)
    report = await asyncio.wait_for(run, 120)
    assert report.changed and "resumed" not in report.detail, report
    assert "aborted" in await _result(earlier)
    assert _where(qemu_lab, name) == {dest.name: True}


# --- case 11: a watched job that failed is a failure ----------------------------------------


async def test_a_watched_job_that_fails_is_reported_failed_not_done(
        qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    name = await asyncio.to_thread(_big_vm, qemu_lab, source, "watchfail")
    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest), limits=SLOW)
    earlier = _earlier_attempt(qemu_lab, inp)  # another worker's, which then died
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)

    _, run, beats = _attempt(_moves(qemu_lab.hv, db, settings, temporal_env), inp)
    await _until("the attempt watches the job", lambda: len(beats) > 0)
    await asyncio.to_thread(_kill_incoming_qemu, dest, name)
    with pytest.raises(ApplicationError) as failed:
        await asyncio.wait_for(run, 60)
    assert failed.value.type == "MigrationFailed", failed.value
    assert "still on the source" in failed.value.message
    assert await _result(earlier) != "done"
    await _until("the destination let go", lambda: _where(qemu_lab, name) == {source.name: True})


async def test_a_retried_attempt_reports_the_real_error_of_its_workers_job(
        qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    """The server gave up on the first attempt (it looked stalled) and retried the step on the
    same worker while the first still ran: the retry watches the same call."""
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    name = await asyncio.to_thread(_big_vm, qemu_lab, source, "retryfail")
    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest), limits=SLOW)
    moves = _moves(qemu_lab.hv, db, settings, temporal_env)
    _, first, _ = _attempt(moves, inp)
    await _until("the migration moves data", lambda: _job(qemu_lab, source, name)[1] > 0)
    _, second, beats = _attempt(moves, inp)
    await _until("the retry watches the job", lambda: len(beats) > 0)
    await asyncio.to_thread(_kill_incoming_qemu, dest, name)
    for attempt in (second, first):
        with pytest.raises(ApplicationError) as failed:
            await asyncio.wait_for(attempt, 60)
        info = failed.value.details[0]
        assert failed.value.type == "MigrationFailed" and info["libvirt_code"], info
        assert "the migration job ended" not in failed.value.message  # libvirt's own words
    await _until("the destination let go", lambda: _where(qemu_lab, name) == {source.name: True})


# --- case 5: a dead destination is not a reason to stop -----------------------------------


def _kill_libvirtd(host: LabHost) -> None:
    pid = read_pid(host.dir / "libvirtd.pid")
    assert pid is not None and pid_alive(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"libvirtd {pid} of {host.name} survived SIGKILL"
        time.sleep(0.02)


def _die_with_us() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _restart_libvirtd(lab: QemuLab, host: LabHost) -> subprocess.Popen[bytes]:
    """Start ``host``'s libvirtd again (the lab's supervisor does not), as the lab started it;
    the lab's state learns its pid, so ``lab down`` stops it. Call from the main thread: the
    daemon dies with the thread that started it."""
    (host.dir / "exited").unlink(missing_ok=True)
    with (host.dir / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(daemon_argv(host, lab.cache_dir / "libvirt"),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_us)
    host.pid = proc.pid
    save_state(lab.state)
    return proc


def _answers(host: LabHost) -> bool:
    try:
        libvirt.open(host.uri).close()
        return True
    except libvirt.libvirtError:
        return False


async def test_a_dead_destination_is_skipped_and_the_inventory_agrees_with_libvirt(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database) -> None:
    source, dead, spare = qemu_lab.host(1), qemu_lab.host(2), qemu_lab.host(3)
    [name] = await fill(client, qemu_lab, source, 1, "deaddest", memory_mib=64)
    await fill(client, qemu_lab, spare, 1, "ballast", memory_mib=64)  # placement prefers dead
    await asyncio.to_thread(_kill_libvirtd, dead)
    try:
        handle = await client.migrate_vm(MigrateVmRequest(name=name))
        try:
            result = await asyncio.wait_for(handle.result(), 240)
        except TaskError as failed:  # allowed: failing cleanly, with the VM on its source
            assert failed.failure.compensation_failed == [], failed.failure
            where = source.name
        else:
            assert result.host == spare.name, result
            assert f"tried {dead.name}, {spare.name}" in result.notes, result.notes
            where = spare.name
        assert _where(qemu_lab, name, [source, spare]) == {where: True}
        vm = inventory.get_vm(db, name)
        assert vm is not None and vm.vm.host == where
        assert reservations(db, qemu_lab.vm_name("")) == []
    finally:
        _restart_libvirtd(qemu_lab, dead)
        await _until(f"{dead.name} answers again", lambda: _answers(dead))
    assert name not in qemu_lab.domains(dead)
    placement(qemu_lab, db)  # every VM on one host, as the inventory says


async def test_a_destination_dead_after_the_switch_over_leaves_the_vm_unknown(
        client: TaskomaticClient, qemu_lab: QemuLab, db: Database, settings: Settings,
        temporal_env: WorkflowEnvironment) -> None:
    """Found by the lab fault runs (kill-destination, after-move): the live migration completed,
    then the destination's libvirtd died before the task confirmed the move. The source says
    the VM is not there and the destination cannot be asked: the task cannot tell where it runs,
    and the inventory must not go on saying "running on the source" — it says ``unknown`` (on
    its last known host) until a Reconcile finds it."""
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    [name] = await fill(client, qemu_lab, source, 1, "switched", memory_mib=64)
    inp = MigrateDomainInput(name=name, source=_ref(source), destination=_ref(dest),
                             limits=MigrationLimits())
    flags, params = migration_flags(inp, live=True)
    await asyncio.to_thread(lambda: qemu_lab.conn(source).lookupByName(name).migrateToURI3(
        dest.uri, params, flags))  # switched over: it runs on dest only
    await asyncio.to_thread(_kill_libvirtd, dest)
    try:
        moves = _moves(qemu_lab.hv, db, settings, temporal_env)
        confirm = ConfirmMoveInput(task_id=f"lab-test-{name}", name=name, source=_ref(source),
                                   destination=_ref(dest))
        with pytest.raises(ApplicationError) as failed:
            await asyncio.to_thread(ActivityEnvironment().run, moves.confirm_move, confirm)
        assert failed.value.type == "HypervisorUnavailable", failed.value
        vm = inventory.get_vm(db, name)
        assert vm is not None and vm.vm.state == VmState.UNKNOWN, vm
    finally:
        _restart_libvirtd(qemu_lab, dest)
        await _until(f"{dest.name} answers again", lambda: _answers(dest))
    assert _where(qemu_lab, name) == {dest.name: True}  # the guest ran on through it all
