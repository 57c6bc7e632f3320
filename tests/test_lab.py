"""The local libvirt lab: its CLI, and our tasks and a raw live migration on its real hosts.

Everything here runs against real libvirtd daemons and QEMU (TCG) guests; see lab_fixtures.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lab_fixtures import CACHE_DIR, QemuLab, leftovers

from lab.control import lab_down, lab_status, lab_up
from lab.guests import seabios_spec
from lab.models import LabHost, LabState
from starter.client import TaskomaticClient
from taskomatic import inventory
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostState,
    StartVmRequest,
    StopVmRequest,
)

pytestmark = pytest.mark.lab

CLI = str(Path(sys.executable).parent / "taskomatic")
LIVE_MIGRATION = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                  | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def _lab_cli(lab_dir: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_DATABASE_URL=database_url, COLUMNS="200")
    return subprocess.run([CLI, "lab", *args, "--dir", str(lab_dir)], env=env, text=True,
                          capture_output=True, timeout=180, cwd=lab_dir.parent)


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _host_alive(lab_dir: Path) -> bool:
    hosts: list[dict[str, Any]] = lab_status(lab_dir)["hosts"]  # type: ignore[assignment]
    return bool(hosts[0]["alive"])


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_lab_cli_up_status_down_leaves_nothing_behind(
        tmp_path_factory: pytest.TempPathFactory, database_url: str, db: Database) -> None:
    lab_dir = tmp_path_factory.mktemp("clilab") / "lab"
    up = _json(_lab_cli(lab_dir, database_url, "up", "--hosts", "2", "--network", "--vcpus",
                        "4", "--memory-mib", "1024", "--json"))
    state = LabState.model_validate(up["state"])
    try:
        assert up["changed"] is True
        names = [h.name for h in state.hosts]
        assert names == ["lab-1", "lab-2"]
        again = _json(_lab_cli(lab_dir, database_url, "up", "--hosts", "2", "--json"))
        assert again["changed"] is False and "already up" in again["notes"][0]

        for host in state.hosts:  # registered, with their migration URI
            record = inventory.get_host(db, host.name)
            assert record is not None
            assert (record.uri, record.state, record.vcpus, record.memory_mib) == (
                host.uri, HostState.UP, 4, 1024)
            assert record.migration_uri == host.migration_uri == f"tcp://{host.address}"
        assert len({h.host_uuid for h in state.hosts}) == 2
        assert state.hosts[0].migration_ports != state.hosts[1].migration_ports

        # A guest, so that `down` has a QEMU process to deal with; its parent is the supervisor.
        conn = libvirt.open(state.hosts[0].uri)
        try:
            dom = conn.defineXML(build_domain_xml(seabios_spec(state.hosts[0], "cli-guest")))
            dom.create()
            qemu_pid = int((state.hosts[0].dir / "run" / "qemu" / "cli-guest.pid").read_text())
            assert _ppid(qemu_pid) == state.supervisor_pid  # the subreaper adopted it
        finally:
            conn.close()

        status = _json(_lab_cli(lab_dir, database_url, "status", "--json"))
        assert status["up"] is True
        assert [(h["name"], h["alive"], h["guests"]) for h in status["hosts"]] == [
            ("lab-1", True, {"cli-guest": "running"}), ("lab-2", True, {})]
        shown = _lab_cli(lab_dir, database_url, "status")
        assert shown.returncode == 0 and "cli-guest (running)" in shown.stdout
    finally:
        down = _json(_lab_cli(lab_dir, database_url, "down", "--json"))
    assert down["changed"] is True
    assert "lab-1: destroyed cli-guest" in down["notes"]
    assert leftovers(state) == []
    assert not Path(f"/proc/{qemu_pid}").exists()
    assert {inventory.get_host(db, n).state for n in names} == {HostState.DOWN}  # type: ignore[union-attr]
    again = _json(_lab_cli(lab_dir, database_url, "down", "--json"))
    assert again["changed"] is False and "no lab is up" in again["notes"][0]
    status = _json(_lab_cli(lab_dir, database_url, "status", "--json"))
    assert status["up"] is False and status["hosts"] == []


async def test_vm_lifecycle_tasks_on_a_lab_host(client: TaskomaticClient, qemu_lab: QemuLab,
                                                db: Database) -> None:
    host = qemu_lab.host(1)
    name = qemu_lab.vm_name("life")
    created = await (await client.create_vm(CreateVmRequest(
        name=name, vcpus=1, memory_mib=64, host=host.name, start=True))).result()
    assert (created.state, created.host) == ("running", host.name)
    assert qemu_lab.domains(host) == {name: True}

    stopped = await (await client.stop_vm(StopVmRequest(name=name, force=True))).result()
    assert stopped.state == "shutoff" and stopped.notes == ["powered off"]
    assert qemu_lab.domains(host) == {name: False}

    started = await (await client.start_vm(StartVmRequest(name=name))).result()
    assert started.state == "running" and qemu_lab.domains(host) == {name: True}

    # SeaBIOS alone ignores ACPI: the graceful stop waits out its timeout, then forces.
    began = time.monotonic()
    stopped = await (await client.stop_vm(StopVmRequest(name=name, timeout_seconds=2))).result()
    assert time.monotonic() - began >= 2
    assert stopped.state == "shutoff"
    assert stopped.notes == ["graceful shutdown requested", "still running after 2s",
                             "powered off"]
    assert qemu_lab.domains(host) == {name: False}
    vm = inventory.get_vm(db, name)
    assert vm is not None and vm.vm.state == "shutoff"

    destroyed = await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    assert destroyed.notes == ["already shut off", "undefined", "removed from inventory"]
    assert qemu_lab.domains(host) == {}
    assert inventory.get_vm(db, name) is None


def _migrate(qemu_lab: QemuLab, source: LabHost, dest: LabHost, name: str,
             bandwidth_mib: int = 0) -> None:
    """The migration call on a connection of its own, as the worker makes it: the test watches
    and aborts the job over the shared one meanwhile."""
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: dest.migration_uri}
    if bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    with qemu_lab.hv.private(source.uri) as conn:
        conn.lookupByName(name).migrateToURI3(dest.uri, params, LIVE_MIGRATION)


def _processed(dom: libvirt.virDomain) -> int:
    return int(dom.jobStats().get("data_processed", 0))


def _wait(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def test_a_linux_guest_survives_a_stalled_migration_and_then_migrates_live(
        qemu_lab: QemuLab) -> None:
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    guest = qemu_lab.start_linux_guest(source, "linux")
    tick, uptime = guest.wait_for_tick(beyond=1)  # booted and counting
    dom = qemu_lab.conn(source).lookupByName(guest.name)

    # A slow migration whose link is cut midway stalls without an error; abortJob ends it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(_migrate, qemu_lab, source, dest, guest.name, 1)  # 1 MiB/s
        try:
            _wait("the migration moves data", lambda: _processed(dom) > 0)
            qemu_lab.cut_link(dest)
            samples = [_processed(dom)]

            def stalled() -> bool:  # no progress for 2 s (what the socket buffers took is sent)
                samples.append(_processed(dom))
                return len(samples) > 10 and len(set(samples[-11:])) == 1

            _wait("the migration stalls", stalled, timeout=30)
            time.sleep(1.0)
            assert _processed(dom) == samples[-1] and not slow.done()  # stuck, and no error
        finally:
            with contextlib.suppress(libvirt.libvirtError):  # never leave the thread hanging
                dom.abortJob()
        with pytest.raises(libvirt.libvirtError):
            slow.result(timeout=60)
    assert qemu_lab.domains(source) == {guest.name: True}
    assert qemu_lab.domains(dest) == {}
    tick, uptime = guest.wait_for_tick(beyond=guest.ticks()[-1][0])  # still counting

    # With the link back, the live migration goes through and the guest keeps counting.
    qemu_lab.restore_link(dest)
    _migrate(qemu_lab, source, dest, guest.name)
    assert qemu_lab.domains(source) == {}
    assert qemu_lab.domains(dest) == {guest.name: True}
    assert qemu_lab.conn(dest).lookupByName(guest.name).isPersistent()
    after, later = guest.wait_for_tick(beyond=tick + 2)
    ticks = guest.ticks()
    # One guest, one counter: every tick once, in order, and the uptime never went back.
    assert [n for n, _ in ticks] == list(range(1, after + 1))
    assert all(a < b for (_, a), (_, b) in itertools.pairwise(ticks))
    assert later > uptime


def test_a_lab_whose_supervisor_was_killed_is_cleaned_up(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    lab_dir = tmp_path_factory.mktemp("killed") / "lab"
    first = lab_up(lab_dir, 1, cache_dir=CACHE_DIR).state
    assert first is not None and first.supervisor_pid is not None
    conn = libvirt.open(first.hosts[0].uri)
    conn.defineXML(build_domain_xml(seabios_spec(first.hosts[0], "orphan"))).create()
    conn.close()
    qemu_pid = int((first.hosts[0].dir / "run" / "qemu" / "orphan.pid").read_text())

    os.kill(first.supervisor_pid, signal.SIGKILL)  # its daemons die with it; QEMU lives on
    try:
        deadline = time.monotonic() + 30
        while _host_alive(lab_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lab_status(lab_dir)["up"] is False
        assert Path(f"/proc/{qemu_pid}").exists()
    except BaseException:
        lab_down(lab_dir)  # a failure here must not leave the orphan QEMU running
        raise

    again = lab_up(lab_dir, 1, cache_dir=CACHE_DIR)  # cleans up, then starts afresh
    try:
        assert again.changed and "cleaned up after a lab whose supervisor had died" in again.notes
        assert f"lab-1: killed leftover QEMU {qemu_pid}" in again.notes
        assert again.state is not None and lab_status(lab_dir)["up"] is True
        fresh = libvirt.open(again.state.hosts[0].uri)
        assert fresh.listAllDomains() == []  # a lab host starts empty
        fresh.close()
    finally:
        lab_down(lab_dir)
    assert leftovers(first) == []
