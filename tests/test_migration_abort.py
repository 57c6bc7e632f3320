"""Aborting a migration job that does not end (``aborts.abort_job``), on test-driver hosts.

In the lab, a cancel that reached a live migration while QEMU waited in ``pre-switchover``
left libvirtd's job waiting forever (QEMU said ``cancelled``), and the task with it; the
randomized fault run of CI found it (issue 12's lab runs). The job here is the migration call
as ``Migrator`` holds it (a future), never ending by itself; the domain is a real test-driver
domain, which the abort suspends ("nudges") and resumes once the job has ended.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import libvirt
import pytest
from helpers import app_error

from starter.dev.parts import write_test_host
from taskomatic.errors import ErrorType
from taskomatic.hypervisor import Hypervisors, Migrator, aborts
from taskomatic.hypervisor.aborts import nudge, resume_nudged
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.models import DomainSpec, HostRef, MigrateDomainInput, MigrationLimits


@pytest.fixture
def move(tmp_path: Path, hypervisors: Hypervisors) -> MigrateDomainInput:
    hosts = [HostRef(name=f"abort-{i}", uri=write_test_host(tmp_path, f"abort-{i}", 4, 4096))
             for i in (1, 2)]
    name = f"abort-{uuid.uuid4().hex[:6]}"
    spec = DomainSpec(host=hosts[0].name, uri=hosts[0].uri, name=name,
                      uuid=str(uuid.uuid4()), vcpus=1, memory_mib=64)
    hypervisors.connection(hosts[0].uri).defineXML(build_domain_xml(spec)).create()
    return MigrateDomainInput(name=name, source=hosts[0], destination=hosts[1],
                              limits=MigrationLimits())


def _state(hv: Hypervisors, inp: MigrateDomainInput) -> int:
    return int(hv.connection(inp.source.uri).lookupByName(inp.name).state()[0])


@pytest.mark.asyncio
async def test_an_aborted_job_that_does_not_end_is_nudged_and_the_vm_resumed(
        move: MigrateDomainInput, hypervisors: Hypervisors, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aborts, "ABORT_NUDGE_SECONDS", 0.3)
    migrator = Migrator(hypervisors, tmp_path)
    dom = hypervisors.connection(move.source.uri).lookupByName(move.name)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[int] = []

    async def beat() -> None:  # the job ends once the nudge has suspended the domain
        seen.append(_state(hypervisors, move))
        if seen[-1] == libvirt.VIR_DOMAIN_PAUSED and not job.done():
            job.set_result(None)

    await asyncio.wait_for(migrator._abort(move, dom, job, beat), timeout=10)
    assert libvirt.VIR_DOMAIN_PAUSED in seen  # it was nudged ...
    assert _state(hypervisors, move) == libvirt.VIR_DOMAIN_RUNNING  # ... and resumed


@pytest.mark.asyncio
async def test_an_aborted_job_that_never_ends_is_given_up_on_clearly(
        move: MigrateDomainInput, hypervisors: Hypervisors, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aborts, "ABORT_NUDGE_SECONDS", 0.2)
    monkeypatch.setattr(aborts, "ABORT_GIVE_UP_SECONDS", 1.0)
    migrator = Migrator(hypervisors, tmp_path)
    dom = hypervisors.connection(move.source.uri).lookupByName(move.name)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def beat() -> None:
        pass

    with pytest.raises(Exception) as caught:
        await asyncio.wait_for(migrator._abort(move, dom, job, beat), timeout=10)
    err, info = app_error(caught.value)
    assert info.type == ErrorType.MIGRATION_FAILED
    assert "did not end within 1s of its abort" in err.message and info.vm == move.name


def test_only_a_running_domain_is_nudged_and_only_a_paused_one_resumed(
        move: MigrateDomainInput, hypervisors: Hypervisors) -> None:
    dom = hypervisors.connection(move.source.uri).lookupByName(move.name)
    assert not resume_nudged(dom) and not resume_nudged(None)  # running / absent: left alone
    assert nudge(dom) and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert not nudge(dom)  # paused already: not "nudged" again
    assert resume_nudged(dom) and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    dom.destroy()
    assert not nudge(dom) and not resume_nudged(dom)  # shut off: neither
