"""Fixtures for tests on the local libvirt lab (real libvirtd + QEMU TCG hosts; needs root).

- ``qemu_lab_session`` (session): one lab of ``LAB_HOSTS`` hosts with network namespaces,
  started the first time a lab test asks for it, registered in the session's inventory, and
  taken down at the end of the session — after which nothing of it may remain (checked).
- ``qemu_lab`` (per test): the same lab with its hosts the only ones in service for the test;
  afterwards every guest left on them is destroyed and forgotten, and they leave service again
  (the other hosts come back), so no other test places VMs on them and every lab test starts
  with empty hosts.

Mark lab tests ``@pytest.mark.lab``. The QEMU capabilities cache and the Linux guest image are
kept in the repository's ``.taskomatic/lab-cache`` across sessions (first build: a few seconds).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import libvirt
import pytest
from helpers import force_host_state, only_hosts_up

from lab.control import lab_down, lab_up, set_link
from lab.guests import LinuxGuest, seabios_spec, start_linux_guest
from lab.models import LabHost, LabState
from lab.register import empty_host
from lab.state import pid_alive
from lab.system import run
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    DiskSpec,
    DomainSpec,
    HostState,
    PlannedDisk,
    RecordVmDisksInput,
    RecordVmInput,
    VmState,
)

LAB_HOSTS = 3
LAB_VCPUS = 32  # capacity registered per host: room for dozens of 64 MiB guests
LAB_MEMORY_MIB = 8192
CACHE_DIR = Path(__file__).resolve().parent.parent / ".taskomatic" / "lab-cache"


class QemuLab:
    """A running lab as tests use it: hosts, libvirt connections, guests, link cuts."""

    def __init__(self, state: LabState, db: Database, hypervisors: Hypervisors) -> None:
        self.state, self.db, self.hv = state, db, hypervisors
        self.cache_dir = state.cache_dir
        self.prefix = uuid.uuid4().hex[:6]

    @property
    def hosts(self) -> list[LabHost]:
        return self.state.hosts

    def host(self, index: int = 1) -> LabHost:
        return self.state.hosts[index - 1]

    def conn(self, host: LabHost) -> libvirt.virConnect:
        """The worker's own connection to ``host`` (shared, like the activities use it)."""
        return self.hv.connection(host.uri)

    def vm_name(self, label: str) -> str:
        return f"vm-{self.prefix}-{label}"

    def domains(self, host: LabHost) -> dict[str, bool]:
        """name → running, as that host's libvirtd sees it."""
        return {d.name(): bool(d.isActive()) for d in self.conn(host).listAllDomains()}

    def seabios_spec(self, host: LabHost, label: str) -> DomainSpec:
        return seabios_spec(host, self.vm_name(label))

    def start_linux_guest(self, host: LabHost, label: str, record: bool = False,
                          disks: Sequence[PlannedDisk] = ()) -> LinuxGuest:
        """A running Linux guest printing ticks, with ``disks`` (existing volumes); with
        ``record`` also a VM row (and its disks) in the inventory on ``host`` (as if CreateVm
        had made it), for tasks that act on it."""
        specs = [DiskSpec(pool=d.pool, volume=d.volume, format=d.format, target=d.target)
                 for d in disks]
        guest = start_linux_guest(self.conn(host), self.vm_name(label), self.cache_dir,
                                  disks=specs)
        if record:
            inventory.record_vm(self.db, RecordVmInput(
                task_id=f"lab-fixture-{guest.name}", name=guest.name, uuid=guest.uuid,
                host=host.name, vcpus=guest.vcpus, memory_mib=guest.memory_mib,
                state=VmState.RUNNING))
            if disks:
                inventory.record_vm_disks(self.db, RecordVmDisksInput(vm=guest.name,
                                                                      disks=list(disks)))
        return guest

    def cut_link(self, host: LabHost) -> None:
        """Cut ``host``'s network: migrations to or from it stall without an error."""
        set_link(host, up=False)

    def restore_link(self, host: LabHost) -> None:
        set_link(host, up=True)

    def set_in_service(self, up: bool) -> None:
        for host in self.hosts:
            force_host_state(self.db, host.name, HostState.UP if up else HostState.DOWN)

    def clear(self) -> None:
        """Destroy and forget every guest on the lab hosts; restore cut links."""
        for host in self.hosts:
            if host.link:
                set_link(host, up=True)
            empty_host(self.db, self.conn(host), host.name)


def leftovers(state: LabState) -> list[str]:
    """Whatever of ``state``'s lab still exists: processes, mounts, namespaces, links, dirs."""
    found = []
    marker = str(state.dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not pid_alive(int(proc.name)):
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                found.append(f"process {proc.name}: {(proc / 'cmdline').read_bytes()[:120]!r}")
            if marker in (proc / "mountinfo").read_bytes():
                found.append(f"mount namespace of process {proc.name} mounts from {state.dir}")
    names = run("ip", "netns", "list").stdout + run("ip", "-o", "link").stdout
    if f"tkl{state.id}" in names:
        found.append(f"network namespaces or links named tkl{state.id}*")
    if (state.dir / "hosts").exists():
        found.append(f"{state.dir / 'hosts'} still exists")
    return found


@pytest.fixture(scope="session")
def qemu_lab_session(tmp_path_factory: pytest.TempPathFactory, database_url: str, db: Database,
                     hypervisors: Hypervisors) -> Iterator[QemuLab]:
    lab_dir = tmp_path_factory.mktemp("qlab")
    report = lab_up(lab_dir, LAB_HOSTS, network=True, vcpus=LAB_VCPUS,
                    memory_mib=LAB_MEMORY_MIB, database_url=database_url, cache_dir=CACHE_DIR,
                    tied=True)  # a killed test run leaves no lab running
    assert report.state is not None
    the_lab = QemuLab(report.state, db, hypervisors)
    the_lab.set_in_service(False)
    try:
        yield the_lab
    finally:
        for host in report.state.hosts:
            hypervisors.forget(host.uri)
        lab_down(lab_dir, database_url=database_url)
        assert leftovers(report.state) == []


@pytest.fixture
def qemu_lab(qemu_lab_session: QemuLab, db: Database) -> Iterator[QemuLab]:
    """The lab's hosts are the only hosts in service during the test (placement picks among
    them only); afterwards they are emptied and leave service, and the others come back."""
    qemu_lab_session.prefix = uuid.uuid4().hex[:6]
    with only_hosts_up(db, [h.name for h in qemu_lab_session.hosts]):
        qemu_lab_session.set_in_service(True)
        try:
            yield qemu_lab_session
        finally:
            qemu_lab_session.clear()
            qemu_lab_session.set_in_service(False)
