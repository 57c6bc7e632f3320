"""Supervised child processes of ``taskomatic dev`` (the Temporal server, the worker, the codec
server), and the start-up error shown without a traceback."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskomatic.logs import get_logger

log = get_logger(component="dev")

_PR_SET_PDEATHSIG = 1


class DevError(Exception):
    """A start-up problem, shown to the user without a traceback."""


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM if this process dies uncleanly (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A supervised subprocess in its own session, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_seconds: float

    argv: list[str]
    env: dict[str, str] | None = None

    @classmethod
    def spawn(cls, name: str, argv: list[str], log_path: Path, stop_seconds: float,
              env: dict[str, str] | None = None, append: bool = False) -> Child:
        """Start ``argv``; its output goes to ``log_path`` (appended to with ``append``)."""
        with log_path.open("ab" if append else "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_parent_death_hook())
        log.info("process started", process=name, pid=proc.pid, log=str(log_path))
        return cls(name, proc, log_path, stop_seconds, argv, env)

    def respawn(self) -> Child:
        """The same program started again, its output added to the same log."""
        return Child.spawn(self.name, self.argv, self.log_path, self.stop_seconds, self.env,
                           append=True)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``stop_seconds``."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                log.warning("process ignored SIGTERM; killing it", process=self.name)
                self._signal(signal.SIGKILL)
                self.proc.wait()
        log.info("process stopped", process=self.name, pid=self.proc.pid,
                 exit_code=self.proc.returncode)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """A DevError with the last lines of its log if the process has ended."""
        if self.proc.poll() is not None:
            raise DevError(f"{self.name} {self.ending()}; last lines of "
                           f"{shown(self.log_path)}:\n{self.tail()}")

    def ending(self) -> str:
        """How the process ended ("exited (1)", "was killed by SIGKILL"); "" while it runs."""
        code = self.proc.poll()
        if code is None:
            return ""
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside (the main thread only): a second Ctrl-C must not cut
    a clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
