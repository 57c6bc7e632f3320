"""``python -m bench.events --quick`` runs: every change of the VM reaches the inventory through
the libvirt event recorder (the bench raises if one does not within 5 s)."""

from __future__ import annotations

from bench.events import main


def test_quick_event_latency_bench(pg_server_url: str) -> None:
    result = main(["--quick", "--database-url", pg_server_url])
    assert result["events"] == 20
    for series in ("events_ms", "baseline_direct_write_ms"):
        assert 0 < result[series]["p50"] <= result[series]["p95"] <= result[series]["max"]
