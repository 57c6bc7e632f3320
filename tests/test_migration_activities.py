"""Migration activities on libvirt test-driver hosts: a cold move re-run after each partial
state finishes it exactly once, and a move cut short is undone by ``locate_domain``."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.migration import MigrationActivities
from conftest import Lab
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.hypervisor.migration import save_file
from taskomatic.inventory.db import Database
from taskomatic.models import (
    DomainSpec,
    HostRef,
    HostSpec,
    LocateDomainInput,
    MigrateDomainInput,
    MigrationLimits,
)
from taskomatic.settings import Settings

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
