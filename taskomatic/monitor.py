"""The worker's live view of its hosts: a host monitor and a libvirt event recorder.

``HostMonitor`` probes every host that is ``up`` or ``non_responsive`` every
``host_check_interval_seconds`` (one cheap libvirt call, ``getLibVersion``, through the host's
bulkhead, at most one probe per host in flight). A host with no answer for
``host_unresponsive_seconds`` (a failed probe, or one still waiting) becomes ``non_responsive``
(``lose_contact``: its VMs no task holds become ``unknown`` with the host's reason); when it
answers again it is ``up`` (``regain_contact``) and the states libvirt reports for its VMs are
recorded at once. Every worker runs one; the transitions are idempotent, so several agree.

``EventRecorder`` subscribes to the lifecycle events of every connection the worker opens
(``taskomatic.hypervisor.events``) and records, on its own thread, what libvirt says *now* of the
domain or pool named — as the reconciliation would, and never for a VM or pool a task holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from temporalio.exceptions import ApplicationError

from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors, lookup, lookup_pool, power_state
from taskomatic.hypervisor.connections import ConnectionLimits
from taskomatic.hypervisor.events import Observed, subscribe
from taskomatic.inventory.db import Database
from taskomatic.inventory.monitor import (
    lose_contact,
    observe_pool_state,
    observe_vm_state,
    regain_contact,
)
from taskomatic.logs import get_logger
from taskomatic.metrics import EVENT_LAG_SECONDS, EVENTS, HOST_CONTACT_CHANGES, HOSTS
from taskomatic.models import ContactChange, HostRecord, HostState
from taskomatic.settings import Settings

log = get_logger(component="monitor")

_WATCHED = (HostState.UP, HostState.NON_RESPONSIVE)
# Hosts probed at once (one probe per host at a time). Beyond this many hosts hanging at once,
# a probe still waiting for a thread counts as silence too: size it above the fleet's size.
PROBE_THREADS = 64


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The keepalive, connect timeout and bulkhead of ``settings`` (``TASKOMATIC_HOST_*``)."""
    return ConnectionLimits(
        keepalive_interval_seconds=settings.host_keepalive_interval_seconds,
        keepalive_count=settings.host_keepalive_count,
        connect_timeout_seconds=settings.host_connect_timeout_seconds,
        calls_per_host=settings.host_calls_per_host,
        slot_wait_seconds=settings.host_call_slot_wait_seconds)


class HostMonitor:
    """Marks hosts ``non_responsive`` and ``up`` from what probing them shows (see module)."""

    def __init__(self, db: Database, hv: Hypervisors, *, interval_seconds: float,
                 unresponsive_seconds: float) -> None:
        self.db, self.hv = db, hv
        self.interval = interval_seconds
        self.unresponsive = unresponsive_seconds
        self._probes: dict[str, tuple[asyncio.Future[str | None], float]] = {}  # and its start
        self._silent_since: dict[str, float] = {}  # host → start of its first unanswered probe
        # Probes may hang (up to a keepalive timeout each): they get threads of their own, so
        # the inventory work of a round never waits behind them.
        self._probing = ThreadPoolExecutor(max_workers=PROBE_THREADS,
                                           thread_name_prefix="host-probe")
        self._recording = ThreadPoolExecutor(max_workers=2, thread_name_prefix="host-monitor")

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval_seconds`` until ``stop`` is set; a failed round is logged."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception as err:  # the database may be away: try again next round
                log.error("host check failed", error=str(err))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
        self._probing.shutdown(wait=False, cancel_futures=True)
        self._recording.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> list[ContactChange]:
        """One round: start the probes not in flight, wait up to one interval for them, and
        apply the transitions due. Returns the changes made."""
        loop = asyncio.get_running_loop()
        hosts = await loop.run_in_executor(self._recording, inventory.list_hosts, self.db)
        HOSTS.clear()
        for state, n in Counter(h.state.value for h in hosts).items():
            HOSTS.labels(state=state).set(n)
        watched = [h for h in hosts if h.state in _WATCHED]
        now = time.monotonic()
        for host in watched:
            if host.name not in self._probes:
                self._probes[host.name] = (
                    loop.run_in_executor(self._probing, self._probe, host), now)
        pending = [self._probes[h.name][0] for h in watched]
        if pending:
            await asyncio.wait(pending, timeout=self.interval)
        changes = []
        for host in watched:
            change = await loop.run_in_executor(self._recording, self._judge, host)
            if change is not None and change.changed:
                changes.append(change)
        return changes

    def _probe(self, host: HostRecord) -> str | None:
        """None if ``host`` answered, else why not."""
        try:
            with self.hv.call("probe", host.uri, host.name, primary=True) as conn:
                conn.getLibVersion()
            return None
        except ApplicationError as err:
            return self.hv.lost.get(host.uri) or err.message
        except Exception as err:  # whatever it is, the host did not answer
            return str(err) or type(err).__name__

    def _judge(self, host: HostRecord) -> ContactChange | None:
        probe, started = self._probes[host.name]
        if probe.done():
            del self._probes[host.name]
            reason = probe.result()
        else:  # still waiting: the host has been silent since the probe started
            reason = (f"no answer to a probe for {time.monotonic() - started:.0f} s"
                      + (f" ({self.hv.lost[host.uri]})" if host.uri in self.hv.lost else ""))
        if reason is None:
            self._silent_since.pop(host.name, None)
            if host.state == HostState.NON_RESPONSIVE:
                return self._regained(host)
            return None
        since = self._silent_since.setdefault(host.name, started)
        silent = time.monotonic() - since
        if host.state != HostState.UP or silent < self.unresponsive:
            return None
        change = lose_contact(self.db, host.name, f"no answer for {silent:.0f} s: {reason}")
        if change.changed:
            HOST_CONTACT_CHANGES.labels(change="lost").inc()
            log.error("host non_responsive: its VMs are recorded unknown", host=host.name,
                      reason=reason, silent_seconds=round(silent, 1), vms=change.vms)
        return change

    def _regained(self, host: HostRecord) -> ContactChange:
        change = regain_contact(self.db, host.name)
        if change.changed:
            HOST_CONTACT_CHANGES.labels(change="regained").inc()
            log.warning("host answers again: up", host=host.name)
            refresh_vm_states(self.db, self.hv, host)
        return change


def refresh_vm_states(db: Database, hv: Hypervisors, host: HostRecord) -> int:
    """Record what libvirt on ``host`` says of each VM the inventory has there (no task holding
    it); returns how many rows changed. A VM whose domain is gone is left to the
    reconciliation. Errors: as ``Hypervisors.call`` (the host stopped answering again)."""
    changed = 0
    with hv.call("read the VM states of", host.uri, host.name) as conn:
        states = {d.name(): power_state(d) for d in conn.listAllDomains()}
    for vm in inventory.list_vms(db, host.name):
        if vm.name in states and observe_vm_state(db, host.name, vm.name, states[vm.name]):
            changed += 1
    return changed


class EventRecorder:
    """Records libvirt lifecycle events in the inventory (see module). ``start()`` hooks it to
    every connection ``hv`` opens from then on and starts its thread."""

    def __init__(self, db: Database, hv: Hypervisors) -> None:
        self.db, self.hv = db, hv
        self._queue: queue.Queue[Observed | None] = queue.Queue()
        self._hosts: dict[str, str] = {}  # URI → host name
        self._thread = threading.Thread(target=self._run, name="libvirt-event-recorder",
                                        daemon=True)

    def start(self) -> None:
        self.hv.on_open(lambda uri, conn: subscribe(conn, uri, self._queue.put))
        self._thread.start()

    def subscribe_open(self) -> None:
        """Subscribe to the connections already open (opened before ``start``)."""
        for uri in self.hv.open_uris():
            subscribe(self.hv.connection(uri), uri, self._queue.put)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (seen := self._queue.get()) is not None:
            try:
                result = self.record(seen)
            except Exception as err:  # the reconciliation is the safety net
                result = "failed"
                log.warning("libvirt event not recorded", uri=seen.uri, name=seen.name,
                            kind=seen.kind, error=str(err))
            EVENTS.labels(kind=seen.kind, result=result).inc()
            if result == "recorded":
                EVENT_LAG_SECONDS.observe(time.monotonic() - seen.at)

    def record(self, seen: Observed) -> str:
        """Record one event: ``recorded``, ``unchanged`` (the inventory agreed, a task holds it,
        or it is not in the inventory on that host) or ``skipped`` (an unregistered host, or
        the domain or pool is gone)."""
        host = self._host(seen.uri)
        if host is None:
            return "skipped"
        with self.hv.call(f"read the {seen.kind} state of", seen.uri, host) as conn:
            if seen.kind == "domain":
                dom = lookup(conn, seen.name)
                if dom is None:
                    return "skipped"
                changed = observe_vm_state(self.db, host, seen.name, power_state(dom))
            else:
                pool = lookup_pool(conn, seen.name)
                if pool is None:
                    return "skipped"
                changed = observe_pool_state(self.db, host, seen.name, bool(pool.isActive()))
        if changed:
            log.info("recorded from a libvirt event", host=host, kind=seen.kind, name=seen.name)
        return "recorded" if changed else "unchanged"

    def _host(self, uri: str) -> str | None:
        if uri not in self._hosts:
            self._hosts = {h.uri: h.name for h in inventory.list_hosts(self.db)}
        return self._hosts.get(uri)

