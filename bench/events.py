"""Event-to-inventory latency: how soon a VM changed behind taskomatic's back shows in the
inventory, through the worker's libvirt event recorder (``taskomatic.monitor.EventRecorder``).

    python -m bench.events [--events 100] [--quick] [--database-url URL] [--embedded-pg]

On a libvirt test-driver host (in-process) with one VM recorded in a fresh inventory database,
the VM is paused and resumed alternately, ``--events`` times. For each change the clock runs from
just before the libvirt call (``suspend``/``resume``) until another database connection reads the
new state in the VM's row (polled every 0.5 ms). The baseline, measured in the same run on the
same rows: the libvirt call followed by the inventory write done directly
(``observe_vm_state``), read back the same way — what the recorder adds is the event delivery,
the queue and its own look-up of the domain's state. Prints p50/p95 of both and their ratio (a
JSON line last). ``--quick`` (20 events) is the smoke test the suite runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import psycopg2

from bench.report import percentile
from bench.stack import fresh_database, postgres_server
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory.db import Database
from taskomatic.inventory.monitor import observe_vm_state
from taskomatic.models import (
    DomainSpec,
    HostSpec,
    RecordVmInput,
    ReserveCapacityInput,
    VmState,
)
from taskomatic.monitor import EventRecorder

POLL_SECONDS = 0.0005
TIMEOUT_SECONDS = 5.0


def _recorded_within(read: Callable[[], str], expected: str, started: float) -> float:
    """Seconds from ``started`` until ``read()`` returns ``expected``. Raises TimeoutError."""
    while read() != expected:
        if time.monotonic() - started > TIMEOUT_SECONDS:
            raise TimeoutError(f"the inventory did not show {expected} within "
                               f"{TIMEOUT_SECONDS:g} s")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def _series(dom: libvirt.virDomain, n: int, read: Callable[[], str],
            direct: Callable[[VmState], object] | None) -> list[float]:
    """``n`` pause/resume changes of ``dom``: seconds until each shows in the inventory (written
    by ``direct`` right after the libvirt call, or else by the event recorder)."""
    took = []
    for i in range(n):
        pausing = i % 2 == 0
        expected = VmState.PAUSED if pausing else VmState.RUNNING
        started = time.monotonic()
        dom.suspend() if pausing else dom.resume()
        if direct is not None:
            direct(expected)
        took.append(_recorded_within(read, expected.value, started))
    if n % 2:  # leave it running
        dom.resume()
        if direct is not None:
            direct(VmState.RUNNING)
        _recorded_within(read, VmState.RUNNING.value, time.monotonic())
    return took


def measure(db_url: str, events: int, work: Path) -> dict[str, Any]:
    """Both series on a fresh test-driver host and VM in the database at ``db_url``."""
    db = Database(db_url, max_connections=4)
    hv = Hypervisors()
    host = HostSpec(name="bench-events", uri=write_test_host(work, "bench-events", 4, 4096),
                    vcpus=4, memory_mib=4096)
    inventory.add_host(db, host)
    name, vm_uuid, task_id = "bench-vm", str(uuid.uuid4()), f"bench-{uuid.uuid4().hex[:8]}"
    inventory.reserve_capacity(db, ReserveCapacityInput(task_id=task_id, vm_name=name, vcpus=1,
                                                        memory_mib=64, host=host.name))
    inventory.record_vm(db, RecordVmInput(task_id=task_id, name=name, uuid=vm_uuid,
                                          host=host.name, vcpus=1, memory_mib=64,
                                          state=VmState.RUNNING))
    dom = hv.connection(host.uri).defineXML(build_domain_xml(DomainSpec(
        host=host.name, uri=host.uri, name=name, uuid=vm_uuid, vcpus=1, memory_mib=64)))
    dom.create()
    reader = psycopg2.connect(db_url)
    reader.autocommit = True

    def read() -> str:
        with reader.cursor() as cur:
            cur.execute("SELECT state FROM vms WHERE name = %s", (name,))
            row = cur.fetchone()
            return str(row[0]) if row else ""

    try:
        baseline = _series(dom, events, read,
                           lambda state: observe_vm_state(db, host.name, name, state))
        recorder = EventRecorder(db, hv)
        recorder.subscribe_open()
        recorder.start()
        try:
            evented = _series(dom, events, read, None)
        finally:
            recorder.stop()
    finally:
        reader.close()
        hv.close()
        db.close()
    return {"events": events, "events_ms": _summary(evented),
            "baseline_direct_write_ms": _summary(baseline),
            "ratio_p50": round(percentile(evented, 50) / percentile(baseline, 50), 2),
            "ratio_p95": round(percentile(evented, 95) / percentile(baseline, 95), 2)}


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(seconds, 50) * 1000, 2),
            "p95": round(percentile(seconds, 95) * 1000, 2),
            "max": round(max(seconds) * 1000, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100, help="changes per series (default 100)")
    p.add_argument("--quick", action="store_true", help="20 events: a smoke test")
    p.add_argument("--database-url", help="a PostgreSQL server to use (default: local or "
                                          "embedded)")
    p.add_argument("--embedded-pg", action="store_true")
    args = p.parse_args(argv)
    events = 20 if args.quick else args.events
    if events < 2:
        p.error("--events: at least 2")
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        work = Path(tmp)
        with postgres_server(args.database_url, args.embedded_pg, work / "pg") as (server, _), \
                fresh_database(server, f"bench_events_{uuid.uuid4().hex[:8]}") as url:
            result = measure(url, events, work)
    ev, base = result["events_ms"], result["baseline_direct_write_ms"]
    print(f"event-to-inventory latency over {events} events: p50 {ev['p50']} ms, "
          f"p95 {ev['p95']} ms (max {ev['max']} ms)")
    print(f"baseline (direct inventory write): p50 {base['p50']} ms, p95 {base['p95']} ms; "
          f"ratio p50 {result['ratio_p50']}x, p95 {result['ratio_p95']}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
