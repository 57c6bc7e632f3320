"""libvirt lifecycle events of domains and storage pools, as a stream of ``Observed`` names.

``subscribe(conn, uri, sink)`` registers ``VIR_DOMAIN_EVENT_ID_LIFECYCLE`` and
``VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE`` callbacks on a connection; each event becomes one
``Observed`` (which URI, domain or pool, which name, when) handed to ``sink`` on libvirt's event
loop thread, so ``sink`` must not block (a ``queue.Queue.put``). The event carries no state on
purpose: the consumer asks libvirt what the domain or pool is *now* (a burst of events on one
domain then costs one look-up per event and always ends on the last state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import libvirt

Kind = Literal["domain", "pool"]


class Observed(NamedTuple):
    """An event: on ``uri``, the ``kind`` called ``name`` changed; ``at`` is ``time.monotonic()``
    when libvirt delivered it; ``event`` is libvirt's event number (e.g. 2 = started)."""

    uri: str
    kind: Kind
    name: str
    event: int
    at: float


Sink = Callable[[Observed], None]

# Domain events that change a power state (not DEFINED/UNDEFINED: the reconciliation judges
# domains appearing or vanishing).
DOMAIN_STATE_EVENTS = frozenset({
    libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED,
})
POOL_STATE_EVENTS = frozenset({libvirt.VIR_STORAGE_POOL_EVENT_STARTED,
                               libvirt.VIR_STORAGE_POOL_EVENT_STOPPED})


def subscribe(conn: libvirt.virConnect, uri: str, sink: Sink) -> None:
    """Deliver the state-changing lifecycle events of every domain and pool on ``conn`` to
    ``sink``. Raises ``libvirtError`` if the driver refuses the registration."""

    def domain_event(_c: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int,
                     _opaque: object) -> None:
        if event in DOMAIN_STATE_EVENTS:
            sink(Observed(uri, "domain", dom.name(), event, time.monotonic()))

    def pool_event(_c: libvirt.virConnect, pool: libvirt.virStoragePool, event: int,
                   _detail: int, _opaque: object) -> None:
        if event in POOL_STATE_EVENTS:
            sink(Observed(uri, "pool", pool.name(), event, time.monotonic()))

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_event, None)
    conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
                                     pool_event, None)
