"""Migration activities on libvirt test-driver hosts: a cold move re-run after each partial
state finishes it exactly once, a move cut short is undone by ``locate_domain``, a cancelled
cold move is awaited to its end, and finding a VM tolerates a host that cannot be asked. The
judging of an ended migration job (``job_outcome``) is tested over plain inputs; the lab tests
(tests/test_lab_migration_faults.py) run it against real jobs."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.migration import MigrationActivities
from conftest import Lab
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.hypervisor.jobs import job_outcome
from taskomatic.hypervisor.migration import save_file
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ConfirmMoveInput,
    DomainSpec,
    HostRef,
    HostSpec,
    LocateDomainInput,
    MigrateDomainInput,
    MigrationLimits,
    MigrationReport,
    RecordVmInput,
    VmState,
)
from taskomatic.settings import Settings

# A host whose libvirtd is down: connecting fails at once (code 38, "Connection refused"-like).
DEAD = HostRef(name="dead-host", uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")

pytestmark = pytest.mark.asyncio


@pytest.fixture
def moves(hypervisors: Hypervisors, db: Database, settings: Settings,
          temporal_env: WorkflowEnvironment) -> MigrationActivities:
    return MigrationActivities(hypervisors, db, settings, temporal_env.client)


def ref(host: HostSpec) -> HostRef:
    return HostRef(name=host.name, uri=host.uri)


def running_vm(lab: Lab, host: HostSpec, label: str) -> tuple[str, str]:
    name, vm_uuid = lab.vm_name(label), str(uuid.uuid4())
    spec = DomainSpec(host=host.name, uri=host.uri, name=name, uuid=vm_uuid, vcpus=1,
                      memory_mib=128)
    lab.hv.connection(host.uri).defineXML(build_domain_xml(spec)).create()
    return name, vm_uuid


@pytest.mark.parametrize("cut_after", ["save", "define", "restore"])
async def test_cold_move_rerun_after_a_partial_attempt_finishes_it(
        moves: MigrationActivities, lab: Lab, settings: Settings, cut_after: str) -> None:
    a, b = lab.host(1), lab.host(2)
    name, vm_uuid = running_vm(lab, a, "partial")
    src, dst = lab.hv.connection(a.uri), lab.hv.connection(b.uri)
    dom = src.lookupByName(name)
    save = save_file(str(settings.migration_save_dir), vm_uuid)
    xml = dom.XMLDesc(0)
    dom.save(str(save))  # what the first attempt did before it was cut off
    if cut_after in ("define", "restore"):
        dst.defineXML(xml)
    if cut_after == "restore":
        dst.restore(str(save))
    inp = MigrateDomainInput(name=name, source=ref(a), destination=ref(b),
                             limits=MigrationLimits())
    report = await ActivityEnvironment().run(moves.migrate_domain, inp)
    assert report.changed and report.mode == "cold"
    assert lab.domains(a) == {} and lab.domains(b) == {name: True}
    assert not Path(save).exists()
    again = await ActivityEnvironment().run(moves.migrate_domain, inp)
    assert (again.changed, again.mode, again.detail) == (False, "none", f"already on {b.name}")


async def test_locate_resumes_a_move_cut_short_on_the_source(moves: MigrationActivities,
                                                             lab: Lab,
                                                             settings: Settings) -> None:
    a, b = lab.host(1), lab.host(2)
    name, vm_uuid = running_vm(lab, a, "undo")
    src, dst = lab.hv.connection(a.uri), lab.hv.connection(b.uri)
    dom = src.lookupByName(name)
    dst.defineXML(dom.XMLDesc(0))  # a stale copy, defined but never started
    dom.save(str(save_file(str(settings.migration_save_dir), vm_uuid)))
    found = ActivityEnvironment().run(moves.locate_domain, LocateDomainInput(
        name=name, hosts=[ref(a), ref(b)], recover_on=a.name))
    assert (found.host, found.state, found.also_defined_on) == (a.name, "running", [])
    assert lab.domains(a) == {name: True} and lab.domains(b) == {}


async def test_locate_leaves_a_different_domain_of_the_same_name_alone(
        moves: MigrationActivities, lab: Lab) -> None:
    a, b = lab.host(1), lab.host(2)
    name, _ = running_vm(lab, a, "twin")
    spec = DomainSpec(host=b.name, uri=b.uri, name=name, uuid=str(uuid.uuid4()), vcpus=1,
                      memory_mib=128)
    lab.hv.connection(b.uri).defineXML(build_domain_xml(spec))
    found = ActivityEnvironment().run(moves.locate_domain, LocateDomainInput(
        name=name, hosts=[ref(a), ref(b)], recover_on=a.name))
    assert (found.host, found.also_defined_on) == (a.name, [b.name])
    assert lab.domains(b) == {name: False}


async def test_list_host_domains_reports_what_libvirt_has(moves: MigrationActivities,
                                                          lab: Lab) -> None:
    a = lab.host(1)
    running, _ = running_vm(lab, a, "on")
    listed = ActivityEnvironment().run(moves.list_host_domains, ref(a))
    assert [(d.name, d.state, d.vcpus, d.memory_mib) for d in listed.domains] == [
        (running, "running", 1, 128)]


# --- an ended job, judged by where its domain is -------------------------------------------


async def test_an_ended_job_moved_the_domain_if_the_destination_has_it_and_the_source_not() -> None:
    completed = {"type": libvirt.VIR_DOMAIN_JOB_COMPLETED}
    assert job_outcome(None, True, completed).moved  # gone from the source, runs there
    assert job_outcome(None, False, {}).moved  # an offline migration: defined there
    assert job_outcome(False, True, {}).moved  # the source's undefine did not happen
    for on_source, on_destination in [(True, None), (True, False), (True, True), (False, None),
                                      (False, False), (None, None)]:
        assert not job_outcome(on_source, on_destination, completed).moved


async def test_a_failed_job_says_why_with_libvirts_own_words_first() -> None:
    stats = {"type": libvirt.VIR_DOMAIN_JOB_FAILED, "errmsg": "No route to host"}
    assert job_outcome(True, None, stats, "internal error: socket closed").why == (
        "internal error: socket closed; still on the source")
    assert job_outcome(True, None, stats).why == "No route to host; still on the source"
    assert job_outcome(True, None, {"type": libvirt.VIR_DOMAIN_JOB_CANCELLED}).why == (
        "the migration job was cancelled; still on the source")
    assert job_outcome(True, None, {"type": libvirt.VIR_DOMAIN_JOB_NONE}).why == (
        "the migration job ended; still on the source")
    assert job_outcome(True, True, {}).why == "running on both hosts"


# --- a cancelled cold move ends first -------------------------------------------------------


async def test_a_cancelled_cold_move_is_awaited_and_reported_when_it_completed(
        moves: MigrationActivities, lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = lab.host(1), lab.host(2)
    name, _ = running_vm(lab, a, "cancelcold")
    started, release = threading.Event(), threading.Event()
    real = moves.migrator.cold_move

    def gated(*args: Any) -> MigrationReport:  # the move is under way when the cancel comes
        started.set()
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(moves.migrator, "cold_move", gated)
    env = ActivityEnvironment()
    run = asyncio.ensure_future(env.run(moves.migrate_domain, MigrateDomainInput(
        name=name, source=ref(a), destination=ref(b), limits=MigrationLimits())))
    assert await asyncio.to_thread(started.wait, 30)
    env.cancel()
    await asyncio.sleep(0.3)
    assert not run.done(), "the step ended while its move still ran"
    release.set()
    report = await asyncio.wait_for(run, 30)
    assert report.changed and report.mode == "cold"
    assert lab.domains(a) == {} and lab.domains(b) == {name: True}


# --- finding a VM while a host cannot be asked --------------------------------------------


async def test_locate_answers_from_the_hosts_that_answer(moves: MigrationActivities,
                                                         lab: Lab) -> None:
    a = lab.host(1)
    name, _ = running_vm(lab, a, "deadpeer")
    found = ActivityEnvironment().run(moves.locate_domain, LocateDomainInput(
        name=name, hosts=[ref(a), DEAD], recover_on=a.name))
    assert (found.host, found.state, found.unreachable) == (a.name, "running", [DEAD.name])
    assert f"could not ask {DEAD.name}" in found.detail


async def test_locate_is_unknown_when_the_vm_runs_on_no_host_that_answered(
        moves: MigrationActivities, lab: Lab, settings: Settings) -> None:
    a = lab.host(1)
    with pytest.raises(ApplicationError) as nowhere:
        ActivityEnvironment().run(moves.locate_domain, LocateDomainInput(
            name=lab.vm_name("nowhere"), hosts=[ref(a), DEAD]))
    assert nowhere.value.type == "HypervisorUnavailable" and not nowhere.value.non_retryable
    assert f"could not ask {DEAD.name}" in nowhere.value.message

    # Saved by a cold move cut short: it may run on the host not asked, so it is not restored.
    name, vm_uuid = running_vm(lab, a, "saved")
    lab.hv.connection(a.uri).lookupByName(name).save(
        str(save_file(str(settings.migration_save_dir), vm_uuid)))
    with pytest.raises(ApplicationError) as unknown:
        ActivityEnvironment().run(moves.locate_domain, LocateDomainInput(
            name=name, hosts=[ref(a), DEAD], recover_on=a.name))
    assert unknown.value.type == "HypervisorUnavailable"
    assert lab.domains(a) == {name: False}


async def test_confirm_move_with_a_dead_destination_finds_the_vm_on_its_source(
        moves: MigrationActivities, lab: Lab, db: Database) -> None:
    a = lab.host(1)
    name, vm_uuid = running_vm(lab, a, "confirm")
    inventory.record_vm(db, RecordVmInput(task_id=f"test-{name}", name=name, uuid=vm_uuid,
                                          host=a.name, vcpus=1, memory_mib=128,
                                          state=VmState.RUNNING))
    here = ActivityEnvironment().run(moves.confirm_move, ConfirmMoveInput(
        task_id=f"move-{name}", name=name, source=ref(a), destination=DEAD))
    assert (here.host, here.moved, here.state) == (a.name, False, "running")
    assert f"could not ask {DEAD.name}" in here.detail
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.host == a.name
