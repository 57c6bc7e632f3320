"""``taskomatic dev --demo`` end to end: real Temporal dev server, PostgreSQL, worker subprocess.

Runs ``run_dev`` in a subprocess from a temporary directory, twice (the second run reuses the
state directory), on a free port and a fresh database, and checks that nothing it started remains.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def _run_demo(cwd: Path, port: int, database_url: str, codec_port: int) -> str:
    env = {**os.environ, "TASKOMATIC_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
           "TASKOMATIC_DATABASE_URL": database_url, "COLUMNS": "200",
           "TASKOMATIC_CODEC_SERVER_ADDRESS": f"127.0.0.1:{codec_port}"}
    done = subprocess.run([sys.executable, "-c", RUN_DEMO], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=90)
    assert done.returncode == 0, done.stdout
    return done.stdout


def test_dev_demo_runs_twice_and_cleans_up(tmp_path: Path, scratch_database_url: str) -> None:
    port, codec_port = free_port_pair(), free_port_pair()
    for _ in range(2):  # the second run finds hosts registered and Temporal's history kept
        out = _run_demo(tmp_path, port, scratch_database_url, codec_port)
        assert f"http://127.0.0.1:{port + 1000}" in out
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
