"""libvirt's event loop: one per process, run by a daemon thread.

libvirt delivers keepalive pings, connection-close callbacks and domain/pool events only through
a registered event loop; without one a hung ``libvirtd`` (``SIGSTOP``) blocks every call on its
connection for ever (shared/notes "Faults and timing"). ``ensure_event_loop`` registers libvirt's
default implementation (``virEventRegisterDefaultImpl``) and runs ``virEventRunDefaultImpl`` on a
thread; it must run before a connection is opened for that connection to get a keepalive, so
``Hypervisors`` calls it when it is made. A 1 s libvirt timer records that the loop still turns
(``event_loop_lag``: the worker's ``/healthz``).
"""

from __future__ import annotations

import threading
import time

import libvirt

from taskomatic.logs import get_logger

log = get_logger(component="hypervisor")

_TICK_SECONDS = 1.0
_guard = threading.Lock()
_last_tick: list[float] = []  # monotonic time of the loop's last timer tick (empty: not started)


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon thread (once per process;
    later calls do nothing)."""
    with _guard:
        if _last_tick:
            return
        libvirt.virEventRegisterDefaultImpl()
        _last_tick.append(time.monotonic())
        libvirt.virEventAddTimeout(int(_TICK_SECONDS * 1000), _tick, None)
        threading.Thread(target=_run, name="libvirt-events", daemon=True).start()


def event_loop_lag() -> float | None:
    """Seconds since the event loop last turned (about 0-1 s when healthy); None when this
    process has no event loop."""
    return time.monotonic() - _last_tick[0] if _last_tick else None


def _tick(_timer: int, _opaque: object) -> None:
    _last_tick[0] = time.monotonic()


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as err:  # never let the loop die: keepalives depend on it
            log.error("libvirt event loop iteration failed", error=str(err))
