"""``lab up`` / ``lab down`` / ``lab status``: start, stop and inspect a lab.

``up`` is idempotent (a lab already up is reported, not restarted) and cleans up after a lab
whose supervisor died; ``down`` destroys every guest, stops every daemon, removes the network
namespaces, links and host directories it made, and reports what it found when nothing was up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import libvirt

from lab import system
from lab.hosts import plan_hosts, write_host_files
from lab.models import LabError, LabHost, LabState
from lab.register import register_hosts, retire_hosts
from lab.state import (
    forget_state,
    lab_id,
    load_state,
    locked,
    pid_alive,
    read_pid,
    reap,
    resolve_dir,
    save_state,
)
from taskomatic.logs import get_logger
from taskomatic.settings import get_settings

log = get_logger(component="lab")
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

READY_SECONDS = 90.0  # a cold QEMU capabilities cache costs ~10 s here, more on a busy machine
STOP_SECONDS = 20.0
PR_SET_PDEATHSIG = 1


@dataclass
class LabReport:
    state: LabState | None
    changed: bool
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def lab_up(lab_dir: Path | None = None, hosts: int = 2, *, network: bool = False,
           vcpus: int = 8, memory_mib: int = 4096, database_url: str | None = None,
           cache_dir: Path | None = None, tied: bool = False,
           tls_pki: Path | None = None) -> LabReport:
    """Start ``hosts`` lab hosts (registered in ``database_url``'s inventory when given).

    ``tls_pki``: every host's libvirtd also listens with TLS on 127.0.0.1 (``LabHost.tls_uri``)
    with the CA, certificate and key in that directory, and requires client certificates.

    ``tied``: the lab stops by itself (guests, daemons, namespaces, links) when the calling
    thread's process ends, even by SIGKILL — for test sessions. Call it from a thread that lives
    as long as the lab should (Linux ties this to the thread that started the supervisor).
    """
    if not 1 <= hosts <= 16:
        raise LabError(f"--hosts must be between 1 and 16 (got {hosts})")
    began = time.monotonic()
    directory = resolve_dir(lab_dir)
    with locked(directory):
        current = load_state(directory)
        if current is not None and _supervisor_alive(current):
            return LabReport(current, False, [f"the lab in {directory} is already up with "
                                              f"{len(current.hosts)} hosts"])
        notes = system.ensure_system()
        if current is not None:
            notes += _teardown(current)
            notes.append("cleaned up after a lab whose supervisor had died")
        state = LabState(id=lab_id(directory), dir=directory,
                         cache_dir=(cache_dir or _default_cache_dir()).resolve(),
                         hosts=plan_hosts(directory, lab_id(directory), hosts, network,
                                          tls_pki),
                         vcpus=vcpus, memory_mib=memory_mib, network=network,
                         bridge=f"tkl{lab_id(directory)}br" if network else None,
                         started_at=datetime.now(UTC))
        save_state(state)  # first: whatever fails below, `down` finds what to clean up
        try:
            _start(state, tied)
            if database_url is not None:
                notes += register_hosts(database_url, state.hosts, vcpus, memory_mib)
        except BaseException:
            _teardown(state)
            forget_state(directory)
            raise
        return LabReport(state, True, notes, time.monotonic() - began)


def lab_down(lab_dir: Path | None = None, database_url: str | None = None) -> LabReport:
    """Stop the lab: guests, daemons, supervisor, namespaces, links, host directories."""
    began = time.monotonic()
    directory = resolve_dir(lab_dir)
    with locked(directory):
        state = load_state(directory)
        if state is None:
            return LabReport(None, False, [f"no lab is up in {directory}"])
        notes = _teardown(state)
        if database_url is not None:
            with contextlib.suppress(Exception):  # the inventory may be gone with its stack
                vms = retire_hosts(database_url, [h.name for h in state.hosts])
                notes.append(f"hosts marked down in the inventory ({vms} VM rows forgotten)")
        forget_state(directory)
        return LabReport(state, True, notes, time.monotonic() - began)


def lab_status(lab_dir: Path | None = None) -> dict[str, object]:
    """What runs: the supervisor, each host's daemon and its guests (name → state)."""
    directory = resolve_dir(lab_dir)
    state = load_state(directory)
    if state is None:
        return {"dir": str(directory), "up": False, "hosts": []}
    hosts = []
    for host in state.hosts:
        entry = host.model_dump(mode="json")
        entry["alive"] = pid_alive(host.pid)
        entry["guests"] = guests_of(host) if entry["alive"] else {}
        hosts.append(entry)
    return {"dir": str(directory), "up": _supervisor_alive(state), "id": state.id,
            "supervisor_pid": state.supervisor_pid, "network": state.network,
            "vcpus": state.vcpus, "memory_mib": state.memory_mib, "hosts": hosts}


def guests_of(host: LabHost) -> dict[str, str]:
    """name → state of the host's guests; a daemon that dies while asked is "unreachable"."""
    conn = None
    try:
        conn = libvirt.open(host.uri)
        return {d.name(): "running" if d.isActive() else "shut off"
                for d in conn.listAllDomains()}
    except libvirt.libvirtError as err:
        return {"?": f"unreachable: {err.get_error_message()}"}
    finally:
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


def set_link(host: LabHost, up: bool) -> None:
    """Cut (``up=False``) or restore a networked lab host's link: migrations to or from it
    stall, with no error, as over a dead network."""
    if host.link is None:
        raise LabError(f"{host.name} has no network namespace: start the lab with --network")
    system.set_link(host.link, up)


# --- internals -------------------------------------------------------------------------------


def _stop_with_caller() -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _supervisor_alive(state: LabState) -> bool:
    pid = state.supervisor_pid
    return pid is not None and pid_alive(pid) and b"lab.supervisor" in _cmdline(pid)


def _default_cache_dir() -> Path:
    return get_settings().lab_cache_dir


def _start(state: LabState, tied: bool) -> None:
    if state.bridge:
        system.create_bridge(state.bridge)
    for host in state.hosts:
        write_host_files(host)
        if host.netns and host.link and host.address and state.bridge:
            system.create_host_netns(host.netns, host.link, state.bridge, host.address)
    log_file = (state.dir / "supervisor.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "lab.supervisor", str(state.dir)],
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
                            preexec_fn=_stop_with_caller() if tied else None)
    log_file.close()
    state.supervisor_pid = proc.pid
    save_state(state)
    deadline = time.monotonic() + READY_SECONDS
    for host in state.hosts:
        _wait_ready(state, host, deadline)
        host.pid = read_pid(host.dir / "libvirtd.pid")
    save_state(state)


def _wait_ready(state: LabState, host: LabHost, deadline: float) -> None:
    while True:
        if not pid_alive(state.supervisor_pid):
            raise LabError(f"the lab supervisor exited; see {state.dir / 'supervisor.log'}:\n"
                           + _tail(state.dir / "supervisor.log"))
        if (host.dir / "exited").exists():
            raise LabError(f"libvirtd of {host.name} exited; last lines of "
                           f"{host.dir / 'log' / 'libvirtd.log'}:\n"
                           + _tail(host.dir / "log" / "libvirtd.log"))
        try:
            conn = libvirt.open(host.uri)
            conn.getVersion()
            conn.close()
            return
        except libvirt.libvirtError as err:
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd of {host.name} did not answer within "
                               f"{READY_SECONDS:.0f} s ({err.get_error_message()}); see "
                               f"{host.dir / 'log' / 'libvirtd.log'}") from None
        time.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _teardown(state: LabState) -> list[str]:
    notes: list[str] = []
    for host in state.hosts:
        gone = _destroy_guests(host)
        if gone:
            notes.append(f"{host.name}: destroyed {', '.join(gone)}")
    _stop_supervisor(state, notes)
    for host in state.hosts:  # guests of a daemon that died before we could ask it
        for pid_file in (host.dir / "run" / "qemu").glob("*.pid"):
            pid = read_pid(pid_file)
            if pid and pid_alive(pid) and b"qemu" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
                notes.append(f"{host.name}: killed leftover QEMU {pid}")
        if pid_alive(host.pid) and b"libvirtd" in _cmdline(host.pid or 0):
            os.kill(host.pid or 0, signal.SIGKILL)
            notes.append(f"{host.name}: killed leftover libvirtd {host.pid}")
    system.delete_network(state)
    for host in state.hosts:
        _remove_tree(host.dir)
    return notes


def _destroy_guests(host: LabHost) -> list[str]:
    if not pid_alive(host.pid):
        return []
    try:
        conn = libvirt.open(host.uri)
    except libvirt.libvirtError:
        return []
    gone = []
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
                gone.append(dom.name())
                if dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return gone


def _stop_supervisor(state: LabState, notes: list[str]) -> None:
    pid = state.supervisor_pid
    if pid is None:
        return
    if not _supervisor_alive(state):
        reap(pid)  # if it was our child
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while pid_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.02)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        notes.append(f"the supervisor ignored SIGTERM for {STOP_SECONDS:.0f} s; killed it")
    reap(pid)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # <lab>/hosts when it is empty
