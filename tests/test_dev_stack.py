"""``taskomatic dev --demo`` end to end: real Temporal dev server, PostgreSQL, worker subprocess.

Runs ``run_dev`` in a subprocess from a temporary directory, twice (the second run reuses the
state directory), on a free port and a fresh database, and checks that nothing it started remains.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from helpers import free_port_pair

RUN_DEMO = "from starter.dev import run_dev; raise SystemExit(run_dev(hosts=2, demo=True))"


def _leftovers(directory: Path) -> list[str]:
    """Processes started from ``directory`` or naming it (server, worker, embedded PostgreSQL)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(directory) in cmdline or proc.info["cwd"] == str(directory):
            found.append(f"{proc.pid}: {cmdline}")
    return found


def _run_demo(cwd: Path, port: int, database_url: str, api_port: int) -> str:
    env = {**os.environ, "TASKOMATIC_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
           "TASKOMATIC_DATABASE_URL": database_url, "COLUMNS": "200",
           "TASKOMATIC_API_ADDRESS": f"127.0.0.1:{api_port}"}
    done = subprocess.run([sys.executable, "-c", RUN_DEMO], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=90)
    assert done.returncode == 0, done.stdout
    return done.stdout


def test_dev_demo_runs_twice_and_cleans_up(tmp_path: Path, scratch_database_url: str) -> None:
    port, api_port = free_port_pair(), free_port_pair()
    for _ in range(2):  # the second run finds hosts registered and Temporal's history kept
        out = _run_demo(tmp_path, port, scratch_database_url, api_port)
        assert f"http://127.0.0.1:{port + 1000}" in out
        assert f"\nAPI  http://127.0.0.1:{api_port}\n" in out, out
        assert "admin token (dev-admin) in .taskomatic/api-token" in out
        assert re.search(r"GET /me: dev-admin \(token\); GET /vms: demo-", out), out
        suffix = re.search(r"demo-([0-9a-f]{4})-1 is running on host-[12]", out)
        assert suffix, out
        for i in range(1, 5):
            assert f"demo-{suffix[1]}-{i}" in out
        assert re.search(rf"demo-{suffix[1]}-1[ │]+host-[12][ │]+shutoff", out), out
        assert re.search(rf"demo-{suffix[1]}-3 is running on host-[12] \(saved, restored", out)
        assert "Plan to clear host-" in out and re.search(r"ClearHost host-[12]: maintenance\b",
                                                           out), out
        assert re.search(r"RestoreHost host-[12]: up", out), out
        assert not _leftovers(tmp_path)
    env_file = (tmp_path / ".taskomatic" / "env").read_text()
    assert f'TASKOMATIC_TEMPORAL_ADDRESS="127.0.0.1:{port}"' in env_file
    assert (tmp_path / ".taskomatic" / "temporal.db").exists()


CLI = str(Path(sys.executable).parent / "taskomatic")


def _worker_pid(stack: psutil.Process) -> int | None:
    """The dev stack's worker process (``python -P -m worker``), if one runs."""
    for child in stack.children():
        try:
            if child.cmdline()[-2:] == ["-m", "worker"] and child.status() != "zombie":
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def _until(check: Callable[[], Any], what: str, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_the_dev_stack_restarts_a_worker_that_exits(tmp_path: Path,
                                                    scratch_database_url: str) -> None:
    """Killed (SIGKILL) or stopped (SIGTERM, after its drain), the worker comes back with a
    line saying so; the stack stays up and a task submitted afterwards completes."""
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_TEMPORAL_ADDRESS=f"127.0.0.1:{port}", COLUMNS="200",
               TASKOMATIC_DATABASE_URL=scratch_database_url, TASKOMATIC_WORKER_DRAIN_SECONDS="5",
               TASKOMATIC_API_ADDRESS=f"127.0.0.1:{free_port_pair()}")
    plain = {k: v for k, v in env.items() if not k.startswith("TASKOMATIC_")}
    said = tmp_path / "dev.out"
    with said.open("w") as out:
        stack = subprocess.Popen([CLI, "dev", "--hosts", "1"], cwd=tmp_path, env=env, text=True,
                                 stdout=out, stderr=subprocess.STDOUT)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], cwd=tmp_path, env=plain, capture_output=True,
                              text=True, timeout=120)

    try:
        _until(lambda: "Ctrl-C to stop" in said.read_text() or stack.poll() is not None,
               "the dev stack")
        assert stack.poll() is None, said.read_text()
        for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM)):
            before = _until(lambda: _worker_pid(psutil.Process(stack.pid)), "a worker")
            os.kill(before, sig)
            _until(lambda b=before: _worker_pid(psutil.Process(stack.pid)) not in (None, b),
                   "the worker to be restarted")
            assert stack.poll() is None
            made = cli("vm", "create", f"after{i}", "--vcpus", "1", "--memory-mib", "64",
                       "--start", "--wait", "--json")
            assert made.returncode == 0, made.stderr
            assert json.loads(made.stdout)["state"] == "running"
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(timeout=90)
    out = said.read_text()
    assert stack.returncode == 0, out
    assert "The worker was killed by SIGKILL; restarting it" in out, out
    assert "The worker exited (0); restarting it" in out, out
    assert not _leftovers(tmp_path)
