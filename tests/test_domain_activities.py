"""DomainActivities against libvirt test-driver hosts: idempotency, typed errors, connection cache.

Activities are called directly (outside Temporal); ``wait_domain_shutoff`` heartbeats, so it runs
in an ``ActivityEnvironment``.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from helpers import app_error, run_together
from temporalio.testing import ActivityEnvironment

from activities.vms import DomainActivities
from conftest import Lab
from starter.dev.parts import write_test_host
from taskomatic.errors import ErrorType
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml, shape_of
from taskomatic.inventory.db import Database
from taskomatic.models import (
    DomainRef,
    DomainReport,
    DomainSpec,
    HostSpec,
    VmState,
    WaitShutoffInput,
)

UNREACHABLE = "qemu+tcp://127.0.0.1:1/system"


@pytest.fixture
def acts(hypervisors: Hypervisors, db: Database) -> DomainActivities:
    return DomainActivities(hypervisors, db)


def spec_for(host: HostSpec, name: str, *, vcpus: int = 1, memory_mib: int = 128,
             uuid_: str | None = None) -> DomainSpec:
    return DomainSpec(host=host.name, uri=host.uri, name=name, uuid=uuid_ or str(uuid.uuid4()),
                      vcpus=vcpus, memory_mib=memory_mib)


def ref_for(host: HostSpec, name: str) -> DomainRef:
    return DomainRef(host=host.name, uri=host.uri, name=name)


def assert_report(report: DomainReport, *, changed: bool, detail: str,
                  state: VmState | None) -> None:
    assert (report.changed, report.detail, report.state) == (changed, detail, state)


# --- idempotency -----------------------------------------------------------------------------


def test_define_twice_is_a_noop_the_second_time(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("def")
    spec = spec_for(host, name, vcpus=2, memory_mib=256)
    first = acts.define_domain(spec)
    assert_report(first, changed=True, detail="defined", state=VmState.SHUTOFF)
    second = acts.define_domain(spec)
    assert_report(second, changed=False, detail="already defined with the same definition",
                  state=VmState.SHUTOFF)
    assert (second.name, second.host) == (name, host.name)
    assert lab.domains(host) == {name: False}
    dom = lab.hv.connection(host.uri).lookupByName(name)
    assert shape_of(dom.XMLDesc()) == (spec.uuid, 2, 256)


def test_define_with_a_new_shape_redefines(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("reshape")
    spec = spec_for(host, name, vcpus=1, memory_mib=128)
    acts.define_domain(spec)
    bigger = spec.model_copy(update={"vcpus": 4, "memory_mib": 512})
    assert_report(acts.define_domain(bigger), changed=True, detail="redefined with a new shape",
                  state=VmState.SHUTOFF)
    dom = lab.hv.connection(host.uri).lookupByName(name)
    assert shape_of(dom.XMLDesc()) == (spec.uuid, 4, 512)


def test_undefine_twice_is_a_noop_the_second_time(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("undef")
    acts.define_domain(spec_for(host, name))
    acts.start_domain(ref_for(host, name))
    assert_report(acts.undefine_domain(ref_for(host, name)), changed=True, detail="undefined",
                  state=None)
    assert lab.domains(host) == {}
    assert_report(acts.undefine_domain(ref_for(host, name)), changed=False,
                  detail="already absent", state=None)


def test_start_twice_is_a_noop_the_second_time(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("start")
    acts.define_domain(spec_for(host, name))
    ref = ref_for(host, name)
    assert_report(acts.start_domain(ref), changed=True, detail="started", state=VmState.RUNNING)
    assert_report(acts.start_domain(ref), changed=False, detail="already running",
                  state=VmState.RUNNING)
    assert lab.domains(host) == {name: True}


def test_shutdown_twice_is_a_noop_the_second_time(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("shut")
    acts.define_domain(spec_for(host, name))
    ref = ref_for(host, name)
    acts.start_domain(ref)
    first = acts.shutdown_domain(ref)
    assert (first.changed, first.detail) == (True, "graceful shutdown requested")
    # The test driver's guests obey ACPI at once.
    assert lab.domains(host) == {name: False}
    assert_report(acts.shutdown_domain(ref), changed=False, detail="already shut off",
                  state=VmState.SHUTOFF)


def test_destroy_twice_is_a_noop_the_second_time(lab: Lab, acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("destroy")
    acts.define_domain(spec_for(host, name))
    ref = ref_for(host, name)
    acts.start_domain(ref)
    assert_report(acts.destroy_domain(ref), changed=True, detail="powered off",
                  state=VmState.SHUTOFF)
    assert_report(acts.destroy_domain(ref), changed=False, detail="already shut off",
                  state=VmState.SHUTOFF)
    assert lab.domains(host) == {name: False}  # destroyed, not undefined


def test_destroy_of_an_absent_domain_is_a_noop(lab: Lab, acts: DomainActivities) -> None:
    host = lab.host()
    assert_report(acts.destroy_domain(ref_for(host, lab.vm_name("ghost"))), changed=False,
                  detail="absent; nothing to power off", state=None)


def test_wait_shutoff_twice_reports_shut_off_without_change(lab: Lab,
                                                            acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("wait")
    acts.define_domain(spec_for(host, name))
    inp = WaitShutoffInput(host=host.name, uri=host.uri, name=name, timeout_seconds=5)
    env = ActivityEnvironment()
    for _ in range(2):
        assert_report(env.run(acts.wait_domain_shutoff, inp), changed=False, detail="shut off",
                      state=VmState.SHUTOFF)


def test_wait_shutoff_times_out_on_a_running_domain_heartbeating(lab: Lab,
                                                                acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("waitrun")
    acts.define_domain(spec_for(host, name))
    acts.start_domain(ref_for(host, name))
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    inp = WaitShutoffInput(host=host.name, uri=host.uri, name=name, timeout_seconds=0.5)
    began = time.monotonic()
    report = env.run(acts.wait_domain_shutoff, inp)
    assert time.monotonic() - began >= 0.5
    assert_report(report, changed=False, detail="still running after 0.5s",
                  state=VmState.RUNNING)
    assert beats and all(str(b[0]).startswith("running, ") for b in beats)
    assert lab.domains(host) == {name: True}  # waiting never forces


# --- typed errors ----------------------------------------------------------------------------


def test_define_same_name_other_uuid_is_a_permanent_duplicate(lab: Lab,
                                                              acts: DomainActivities) -> None:
    host, name = lab.host(), lab.vm_name("dup")
    original = spec_for(host, name)
    acts.define_domain(original)
    with pytest.raises(Exception) as caught:
        acts.define_domain(spec_for(host, name))
    err, info = app_error(caught.value)
    assert err.type == ErrorType.DUPLICATE_DOMAIN.value
    assert err.non_retryable is True
    assert (info.type, info.field, info.host, info.vm, info.retryable) == (
        ErrorType.DUPLICATE_DOMAIN, "name", host.name, name, False)
    assert original.uuid in err.message
    dom = lab.hv.connection(host.uri).lookupByName(name)
    assert dom.UUIDString() == original.uuid  # the existing domain is untouched


Call = Callable[[DomainActivities, DomainRef], DomainReport]
NEEDS_DOMAIN: dict[str, Call] = {
    "start": lambda a, r: a.start_domain(r),
    "shutdown": lambda a, r: a.shutdown_domain(r),
    "wait": lambda a, r: ActivityEnvironment().run(
        a.wait_domain_shutoff, WaitShutoffInput(**r.model_dump(), timeout_seconds=1)),
}


@pytest.mark.parametrize("op", NEEDS_DOMAIN)
def test_actions_on_an_absent_domain_raise_domain_not_found(lab: Lab, acts: DomainActivities,
                                                            op: str) -> None:
    host, name = lab.host(), lab.vm_name(f"absent-{op}")
    with pytest.raises(Exception) as caught:
        NEEDS_DOMAIN[op](acts, ref_for(host, name))
    err, info = app_error(caught.value)
    assert err.type == ErrorType.DOMAIN_NOT_FOUND.value
    assert err.non_retryable is True
    assert (info.host, info.vm) == (host.name, name)
    assert lab.domains(host) == {}


ANY_OP: dict[str, Call] = {
    **NEEDS_DOMAIN,
    "define": lambda a, r: a.define_domain(DomainSpec(**r.model_dump(), uuid=str(uuid.uuid4()),
                                                      vcpus=1, memory_mib=128)),
    "undefine": lambda a, r: a.undefine_domain(r),
    "destroy": lambda a, r: a.destroy_domain(r),
}


@pytest.mark.parametrize("op", ANY_OP)
def test_unreachable_hypervisor_is_retryable_and_names_the_host(op: str, db: Database) -> None:
    hv = Hypervisors()
    try:
        ref = DomainRef(host="far-away-host", uri=UNREACHABLE, name="vm-x")
        with pytest.raises(Exception) as caught:
            ANY_OP[op](DomainActivities(hv, db), ref)
        err, info = app_error(caught.value)
        assert err.type == ErrorType.HYPERVISOR_UNAVAILABLE.value
        assert err.non_retryable is False
        assert info.retryable is True
        assert "far-away-host" in err.message
        assert (info.host, info.vm) == ("far-away-host", "vm-x")
        assert info.libvirt_code == libvirt.VIR_ERR_SYSTEM_ERROR
    finally:
        hv.close()


# --- the connection cache --------------------------------------------------------------------


@pytest.fixture
def private_hv() -> Iterator[Hypervisors]:
    hv = Hypervisors()
    yield hv
    hv.close()


def test_one_connection_per_uri_across_16_threads(tmp_path: Path, private_hv: Hypervisors
                                                  ) -> None:
    uri = write_test_host(tmp_path, "cache", 4, 4096)
    other = write_test_host(tmp_path, "cache2", 4, 4096)
    got = run_together(16, lambda _i: private_hv.connection(uri))
    assert all(isinstance(c, libvirt.virConnect) for c in got), got
    assert len({id(c) for c in got}) == 1
    assert got[0] is private_hv.connection(uri)
    assert private_hv.connection(other) is not got[0]


def test_closed_connection_is_reopened_and_the_test_host_comes_back_empty(
        tmp_path: Path, private_hv: Hypervisors) -> None:
    """A test:/// host lives only as long as its connection: after the cached connection is
    closed the next call opens a new one, and every domain defined before is gone."""
    uri = write_test_host(tmp_path, "reopen", 4, 4096)
    first = private_hv.connection(uri)
    first.defineXML(build_domain_xml(DomainSpec(host="reopen", uri=uri, name="doomed",
                                                uuid=str(uuid.uuid4()), vcpus=1,
                                                memory_mib=128)))
    assert [d.name() for d in first.listAllDomains()] == ["doomed"]
    first.close()
    second = private_hv.connection(uri)
    assert second is not first
    assert second.isAlive()
    assert second.listAllDomains() == []
    assert private_hv.connection(uri) is second


def test_activity_after_connection_close_sees_an_empty_host(tmp_path: Path,
                                                            private_hv: Hypervisors,
                                                            db: Database) -> None:
    """Through an activity, a closed connection costs at most one retryable failure; the retry
    reconnects and finds the test:/// host empty (its domains died with the old connection)."""
    uri = write_test_host(tmp_path, "reopen2", 4, 4096)
    acts = DomainActivities(private_hv, db)
    ref = DomainRef(host="reopen2", uri=uri, name="doomed")
    acts.define_domain(DomainSpec(**ref.model_dump(), uuid=str(uuid.uuid4()), vcpus=1,
                                  memory_mib=128))
    private_hv.connection(uri).close()
    try:
        report = acts.undefine_domain(ref)
    except Exception as exc:
        err, info = app_error(exc)
        assert err.type == ErrorType.HYPERVISOR_UNAVAILABLE.value and info.retryable
        report = acts.undefine_domain(ref)
    assert_report(report, changed=False, detail="already absent", state=None)


# --- domain XML ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ['a<b&"c', "x]]>y", "it's", "<!--", "&amp;"])
def test_domain_xml_escapes_metacharacters(name: str) -> None:
    """Request models refuse such names (tests/test_models.py); the builder escapes anyway."""
    spec = DomainSpec.model_construct(host="h", uri="test:///default", name=name,
                                      uuid="6f2c9a8e-0d0e-4c1b-9a53-1b2f0e7d5c11", vcpus=3,
                                      memory_mib=384)
    xml = build_domain_xml(spec)
    root = ET.fromstring(xml)
    assert root.findtext("name") == name
    assert [el.tag for el in root] == ["name", "uuid", "memory", "vcpu", "os", "metadata"]
    assert root.get("type") == "test"
    assert shape_of(xml) == ("6f2c9a8e-0d0e-4c1b-9a53-1b2f0e7d5c11", 3, 384)


def test_domain_xml_for_qemu_has_arch_and_devices() -> None:
    spec = DomainSpec(host="h", uri="qemu+tls://hv1/system", name="vm1",
                      uuid=str(uuid.uuid4()), vcpus=2, memory_mib=1024)
    root = ET.fromstring(build_domain_xml(spec))
    assert root.get("type") == "qemu"
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("arch") == "x86_64"
    assert root.find("devices/serial") is not None
    assert root.find("metadata/{https://taskomatic.dev/xmlns/1}managed") is not None
