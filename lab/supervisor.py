"""The lab supervisor: ``python -m lab.supervisor <lab dir>``, started (detached) by ``lab up``.

It is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): QEMU processes, which libvirtd
daemonizes, become its children instead of PID 1's, and it reaps every child the moment it exits.
libvirt waits for a destroyed guest's process to vanish, so this makes a destroy or a migration
take ~0.2 s instead of PID 1's ~1.6 s here.

It starts one libvirtd per host (each in its own mount namespace, see ``lab.hosts``), then only
reaps. On SIGTERM it stops the daemons, kills whatever children are left (guests), reaps them,
removes the lab's network namespaces and links, and exits. The daemons get SIGTERM should the
supervisor die (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.hosts import daemon_argv
from lab.models import LabError, LabHost
from lab.state import load_state
from lab.system import delete_network

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
DAEMON_STOP_SECONDS = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


class _Stop(Exception):
    pass


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor[{os.getpid()}]: {message}", flush=True)


def _on_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _children() -> list[int]:
    """Pids whose parent is this process (adopted orphans included)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == me:
            found.append(int(entry.name))
    return found


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap_all(daemons: dict[int, LabHost]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reaped(daemons, pid, status)


def _reaped(daemons: dict[int, LabHost], pid: int, status: int) -> None:
    """Note a daemon's exit (in the log and in ``<host dir>/exited``, which ``lab up`` reads)."""
    host = daemons.pop(pid, None)
    if host is not None:
        code = os.waitstatus_to_exitcode(status)
        _say(f"libvirtd of {host.name} (pid {pid}) exited: {code}")
        with contextlib.suppress(OSError):
            (host.dir / "exited").write_text(str(code))


def _stop(daemons: dict[int, LabHost]) -> None:
    for pid in list(daemons):
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_STOP_SECONDS
    while daemons and time.monotonic() < deadline:
        _reap_all(daemons)
        time.sleep(0.02)
    for pid in _children():  # daemons that ignored SIGTERM, guests nobody destroyed
        _say(f"killing leftover child {pid}")
        _kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + DAEMON_STOP_SECONDS
    while _children() and time.monotonic() < deadline:
        _reap_all(daemons)
        time.sleep(0.02)
    _reap_all(daemons)


def _wait_for_capabilities(cache_dir: Path, daemons: dict[int, LabHost]) -> None:
    """With a cold cache, let the first daemon probe QEMU alone (seconds) before the others start,
    so they read its result instead of all probing at once and writing the same files."""
    caps = cache_dir / "qemu" / "capabilities"
    deadline = time.monotonic() + 60
    while not any(caps.glob("*.xml")) and time.monotonic() < deadline:
        _reap_all(daemons)  # the probe's QEMU is our child: libvirt waits for it to be reaped
        if not daemons:  # the first daemon died: the others would say why too
            return
        time.sleep(0.02)


def main(lab_dir: Path) -> int:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        _say(f"cannot become a child subreaper (errno {ctypes.get_errno()})")
        return 1
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    state = load_state(lab_dir)
    if state is None:
        _say(f"no lab state in {lab_dir}")
        return 1
    cache_dir = state.cache_dir / "libvirt"
    cache_dir.mkdir(parents=True, exist_ok=True)

    daemons: dict[int, LabHost] = {}
    procs = []  # kept referenced: a collected Popen would reap behind our back
    try:
        for host in state.hosts:
            log = (host.dir / "daemon.log").open("ab")
            proc = subprocess.Popen(daemon_argv(host, cache_dir), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent)
            log.close()
            procs.append(proc)
            daemons[proc.pid] = host
            _say(f"started libvirtd of {host.name} (pid {proc.pid})")
            if len(daemons) == 1:
                _wait_for_capabilities(cache_dir, daemons)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
                continue
            _reaped(daemons, pid, status)
    except _Stop as stop:
        _say(f"{stop}: stopping {len(daemons)} daemons")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop(daemons)
        if state.network:  # also when our starter died (`lab up` with tied=True)
            try:
                delete_network(state)
            except LabError as err:
                _say(f"network clean-up failed: {err}")
        _say("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
