"""Where a lab lives on disk, and its state file.

``<lab dir>/lab.json`` exists exactly while the lab is up (written by ``lab up`` before any
daemon starts, removed by ``lab down`` after everything it started is gone), so a crashed
``up`` or a killed supervisor is still cleaned up by the next ``down`` or ``up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from lab.models import LabError, LabHost, LabState
from taskomatic.settings import get_settings

STATE_FILE = "lab.json"
# A unix socket path is limited to 108 bytes (sun_path), terminator included.
MAX_SOCKET_PATH = 107


def default_lab_dir() -> Path:
    return get_settings().lab_dir


def resolve_dir(lab_dir: Path | None) -> Path:
    path = (lab_dir or default_lab_dir()).resolve()
    if any(ch.isspace() or ch in "<>\"'&?#%" for ch in str(path)):
        raise LabError(f"lab directory {path} must not contain spaces, quotes or URI "
                       "characters (&?#%): it becomes part of each host's libvirt URI")
    socket = path / "hosts" / "lab-99" / "run" / "libvirt-sock"
    if len(str(socket)) > MAX_SOCKET_PATH:
        raise LabError(f"lab directory {path} is too long: the libvirt socket paths under it "
                       f"would exceed {MAX_SOCKET_PATH} bytes; set TASKOMATIC_LAB_DIR to a "
                       "shorter path")
    return path


def lab_id(lab_dir: Path) -> str:
    """Six hex digits naming this lab's namespaces and links (unique per directory)."""
    return hashlib.sha1(str(lab_dir).encode()).hexdigest()[:6]


def load_state(lab_dir: Path | None = None) -> LabState | None:
    """The state of the lab in ``lab_dir`` (default: the ``lab_dir`` setting), None if not up."""
    path = resolve_dir(lab_dir) / STATE_FILE
    if not path.exists():
        return None
    return LabState.model_validate_json(path.read_text(encoding="utf-8"))


def save_state(state: LabState) -> None:
    path = state.dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)


def forget_state(lab_dir: Path) -> None:
    (lab_dir / STATE_FILE).unlink(missing_ok=True)


def lab_hosts(lab_dir: Path | None = None) -> list[LabHost]:
    """The hosts of the running lab: ``name``, ``uri`` (libvirt), ``migration_uri``, …"""
    state = load_state(lab_dir)
    if state is None:
        raise LabError(f"no lab is up in {resolve_dir(lab_dir)}; run `taskomatic lab up`")
    return state.hosts


@contextlib.contextmanager
def locked(lab_dir: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per lab directory."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with (lab_dir / "lab.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (no-op otherwise)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
