"""Every benchmark, in a quick mode, as a smoke test: it must run to the end and pass its own
consistency checks. Never its timing: the figures are printed, not asserted.

Each runs as ``make bench`` runs it (``python -m bench ...`` in a process of its own, which starts
its own Temporal dev server and worker) on the session's PostgreSQL server, where it creates and
drops a fresh database. The checks are the benchmarks' own (exit status 1 and ``"ok": false`` on
any problem): for the lifecycle, every measured task completed and ran exactly the activities the
warm-up's chains ran (derived from the workflows, so a step added to a task cannot break the
benchmark unseen), the baseline as many hypervisor and inventory steps, nothing left behind; for
ordering, no ordered task failed, every VM ended in the state its last task asked for, no claim
left; for clear-host, every VM moved, the source empty, every domain on a destination, no
reservation left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Generous: a run takes ~10 s on a quiet 2-core machine; the bound only stops a hung run.
TIMEOUT_S = 240


def run_bench(*args: str) -> dict[str, Any]:
    """Run ``python -m <args>``; its last stdout line parsed (the benchmark's JSON record).
    Fails the test, with the output, if it exits non-zero or prints no record."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    shown = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n" \
            f"{proc.stderr[-4000:]}"
    assert proc.returncode == 0, shown
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), shown
    record: dict[str, Any] = json.loads(lines[-1])
    assert record["ok"] and not record["problems"], shown
    return record


def test_lifecycle_bench_quick(pg_server_url: str) -> None:
    vms = 8
    record = run_bench("bench", "--vms", str(vms), "--warmup", "1", "--unloaded", "1",
                       "--rounds", "1", "--pg-url", pg_server_url)
    tk, base = record["taskomatic"], record["baseline"]
    assert (tk["tasks"], tk["failures"], base["tasks"], base["failures"]) == (
        3 * vms, 0, 3 * vms, 0)
    # The baseline mirrors the hypervisor and inventory steps the warm-up saw, per task kind.
    steps = record["config"]["steps"]
    assert set(steps) == {"CreateVm", "StopVm", "DestroyVm"}
    assert record["config"]["baseline_steps"] == {
        kind: sum(int(a.split(" x")[1].split()[0]) if " x" in a else 1
                  for a in acts if not a.endswith("(ordering)"))
        for kind, acts in steps.items()}
    assert base["activities"] == vms * sum(record["config"]["baseline_steps"].values())
    assert record["ratio_tasks_per_s"] > 0 and record["ratio_latency_p50"] > 0


def test_ordering_bench_quick(pg_server_url: str) -> None:
    record = run_bench("bench.ordering", "--quick", "--pg-url", pg_server_url)
    assert record["ordered"]["failed"] == 0
    assert record["ratios"]["contended_throughput"] > 0


def test_clear_host_bench_quick(pg_server_url: str) -> None:
    record = run_bench("bench", "clear-host", "--quick", "--pg-url", pg_server_url)
    assert record["final_state"] == "maintenance"
    # --quick clears 16 VMs 8 per run: the ClearHost continued as new at least once.
    assert record["clear_host_runs"] >= 2
    assert record["ratio"] > 0
