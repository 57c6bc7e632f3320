"""libvirt access: one persistent connection per URI, and libvirt errors made into typed ones.

``virConnect`` objects are safe to share across threads, and the test driver's private hosts
(``test:///path/host.xml``) live exactly as long as their connection, so a worker opens each URI
once and keeps it; a connection found dead is dropped and re-opened on the next call.

A host that stops answering must not hold the worker (README "Hosts that stop answering"):
- every connection gets a libvirt keepalive (``setKeepAlive``: a ping every
  ``keepalive_interval_seconds``, closed after ``keepalive_count`` unanswered ones) and a close
  callback, served by libvirt's event loop (``taskomatic.hypervisor.eventloop``), so a call on a
  hung daemon's connection fails within about interval * (count + 1) seconds;
- opening runs on its own thread and is waited for at most ``connect_timeout_seconds`` (a new
  ``libvirt.open`` to a stopped daemon blocks for ever); while one open of a URI is pending, other
  calls to it fail at once;
- bulkhead: at most ``calls_per_host`` calls per URI run at once; a call that finds them all
  taken waits at most ``slot_wait_seconds``. So a stuck host holds at most its own share of
  threads and activity slots, and tasks that need it fail fast with ``HypervisorUnavailable``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.eventloop import ensure_event_loop
from taskomatic.logs import get_logger
from taskomatic.models import VmState

log = get_logger(component="hypervisor")

# libvirt prints every error to stderr by default; they are raised (and logged) instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Not VIR_ERR_SYSTEM_ERROR: libvirt uses it for "cannot connect" (no connection then, so the
# host counts as unavailable below) and for OS errors on a reachable host alike ("Not a
# directory"), which no retry mends.
_UNAVAILABLE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
_CLASSES = {
    libvirt.VIR_ERR_NO_DOMAIN: ErrorType.DOMAIN_NOT_FOUND,
    libvirt.VIR_ERR_OPERATION_INVALID: ErrorType.INVALID_OPERATION,
    libvirt.VIR_ERR_XML_ERROR: ErrorType.INVALID_DEFINITION,
    libvirt.VIR_ERR_XML_DETAIL: ErrorType.INVALID_DEFINITION,
    libvirt.VIR_ERR_DOM_EXIST: ErrorType.DUPLICATE_DOMAIN,
    libvirt.VIR_ERR_NO_SUPPORT: ErrorType.NOT_SUPPORTED,
    libvirt.VIR_ERR_NO_STORAGE_POOL: ErrorType.UNKNOWN_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL: ErrorType.UNKNOWN_VOLUME,
}

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.SUSPENDED,
}


def power_state(dom: libvirt.virDomain) -> VmState:
    state, _reason = dom.state()
    return _STATES.get(state, VmState.UNKNOWN)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long the worker waits for a host, and how much of the worker one host may hold
    (seconds; the ``TASKOMATIC_HOST_*`` settings)."""

    keepalive_interval_seconds: int = 2
    keepalive_count: int = 3
    connect_timeout_seconds: float = 5.0
    calls_per_host: int = 8
    slot_wait_seconds: float = 1.0


# Why libvirt closed a connection (virConnectCloseReason).
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "connection error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the daemon closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out: the daemon does not answer",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the worker",
}

OpenListener = Callable[[str, libvirt.virConnect], None]
CloseListener = Callable[[str, str], None]


class Hypervisors:
    """The worker's libvirt connections, keyed by URI, with their keepalives and bulkheads."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        ensure_event_loop()  # before any open: keepalives and events need it
        self.limits = limits or ConnectionLimits()
        self._conns: dict[str, libvirt.virConnect] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._gates: dict[str, threading.BoundedSemaphore] = {}
        self._opening: dict[tuple[str, bool], Future[libvirt.virConnect]] = {}
        self._free: dict[str, list[libvirt.virConnect]] = {}  # idle leased connections by URI
        self._guard = threading.Lock()
        self._on_open: list[OpenListener] = []
        self._on_close: list[CloseListener] = []
        self._retired: list[libvirt.virConnect] = []  # dead, maybe still in use: see _retire
        self.lost: dict[str, str] = {}  # URI → why its last connection closed (until reopened)

    def on_open(self, listener: OpenListener) -> None:
        """Call ``listener(uri, conn)`` for every connection opened from now on (on the opening
        thread; e.g. to subscribe to its events). Its errors are logged, never raised."""
        self._on_open.append(listener)

    def on_close(self, listener: CloseListener) -> None:
        """Call ``listener(uri, reason)`` when libvirt closes a connection (keepalive timeout,
        daemon gone); it runs on the event loop thread, so it must not block."""
        self._on_close.append(listener)

    def open_uris(self) -> list[str]:
        """The URIs with an open connection."""
        return sorted(self._conns)

    def connection(self, uri: str) -> libvirt.virConnect:
        """The open connection to ``uri``, opened (or re-opened) as needed.

        Raises ``HypervisorUnavailable`` when the open does not finish within
        ``connect_timeout_seconds`` or another open of ``uri`` is still pending, and
        ``libvirtError`` when libvirt refuses the open.
        """
        with self._guard:
            lock = self._locks.setdefault(uri, threading.Lock())
        with lock:
            conn = self._conns.get(uri)
            if conn is not None and _alive(conn):
                return conn
            if conn is not None:
                log.warning("libvirt connection lost; reopening", uri=uri)
                self._retire(uri, conn)
            conn = self._open(uri, primary=True)
            self._conns[uri] = conn
            return conn

    def _lease(self, uri: str) -> libvirt.virConnect:
        """A connection to ``uri`` for one call's exclusive use (``_give_back`` after): an idle
        one, else a new one. libvirt 9.0's client crashed (SIGSEGV, measured here) when a
        keepalive timeout closed a connection that several threads were waiting on, so a remote
        connection serves one call at a time; an in-process driver (``test:``) cannot hang and
        its state lives in its one connection, which every call shares."""
        if uri.startswith("test:"):
            return self.connection(uri)
        with self._guard:
            free = self._free.setdefault(uri, [])
            while free:
                conn = free.pop()
                if _alive(conn):
                    return conn
                self._retired.append(conn)
        return self._open(uri, primary=False)

    def _give_back(self, uri: str, conn: libvirt.virConnect) -> None:
        if uri.startswith("test:"):
            return
        with self._guard:
            (self._free.setdefault(uri, []) if _alive(conn) else self._retired).append(conn)

    def _open(self, uri: str, primary: bool) -> libvirt.virConnect:
        """A new connection (the primary one: with the open listeners), opened on a thread of
        its own and waited for at most ``connect_timeout_seconds``. At most one open per URI
        (and kind) is pending: a caller finding one pending fails at once, and an open's
        connection goes to exactly one caller (the opener, or the first to come after it gave
        up waiting), never to two."""
        key = (uri, primary)
        with self._guard:
            pending = self._opening.get(key)
            created = pending is None
            mine = pending is None or pending.done()
            if pending is None:
                pending = Future()
                self._opening[key] = pending
                threading.Thread(target=self._opener, args=(uri, primary, pending), daemon=True,
                                 name="libvirt-open").start()
        if mine:
            wait([pending], timeout=self.limits.connect_timeout_seconds)
        with self._guard:
            mine = mine and pending.done() and self._opening.get(key) is pending
            if mine:
                del self._opening[key]
        if not mine:
            why = (f"no answer within {self.limits.connect_timeout_seconds:g} s" if created
                   else "an earlier connection attempt is still waiting for an answer")
            self.lost.setdefault(uri, why)
            raise unavailable(f"connect to {uri}: {why}", uri)
        conn = pending.result()  # or its libvirtError
        self.lost.pop(uri, None)
        return conn

    def _opener(self, uri: str, primary: bool, result: Future[libvirt.virConnect]) -> None:
        try:
            conn = libvirt.open(uri)
            self._watch(uri, conn, primary)
        except libvirt.libvirtError as err:
            result.set_exception(err)
            return
        result.set_result(conn)

    def _watch(self, uri: str, conn: libvirt.virConnect, primary: bool) -> None:
        """Keepalive, close callback and (on the primary connection) the open listeners."""
        try:
            conn.setKeepAlive(self.limits.keepalive_interval_seconds, self.limits.keepalive_count)
        except libvirt.libvirtError as err:  # the test driver has none (code 3): it cannot hang
            if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
        conn.registerCloseCallback(self._closed, uri)
        for listener in self._on_open if primary else ():
            try:
                listener(uri, conn)
            except Exception as err:
                log.error("connection listener failed", uri=uri, error=str(err))

    def _closed(self, _conn: libvirt.virConnect, reason: int, uri: str) -> None:
        why = _CLOSE_REASONS.get(reason, f"closed (reason {reason})")
        if reason != libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            self.lost[uri] = why
            log.warning("libvirt connection closed", uri=uri, reason=why)
        for listener in self._on_close:
            try:
                listener(uri, why)
            except Exception as err:
                log.error("close listener failed", uri=uri, error=str(err))

    @contextmanager
    def private(self, uri: str) -> Iterator[libvirt.virConnect]:
        """A connection to ``uri`` of the caller's own, closed afterwards: for one call that
        blocks for a long time (a migration) while other threads use the shared one. Not for
        ``test:///`` hosts, whose state lives in the shared connection. It has a keepalive too,
        and its open waits at most ``connect_timeout_seconds`` (``HypervisorUnavailable``)."""
        opened: Future[libvirt.virConnect] = Future()

        def open_it() -> None:
            try:
                opened.set_result(libvirt.open(uri))
            except libvirt.libvirtError as err:
                opened.set_exception(err)
        threading.Thread(target=open_it, daemon=True, name="libvirt-open").start()
        try:
            conn = opened.result(timeout=self.limits.connect_timeout_seconds)
        except TimeoutError:  # closed if it ever opens: nobody will use it
            opened.add_done_callback(lambda f: f.exception() is None and f.result().close())
            raise unavailable(f"connect to {uri}: no answer within "
                              f"{self.limits.connect_timeout_seconds:g} s", uri) from None
        try:
            with suppress(libvirt.libvirtError):
                conn.setKeepAlive(self.limits.keepalive_interval_seconds,
                                  self.limits.keepalive_count)
            yield conn
        finally:
            with suppress(libvirt.libvirtError):
                conn.close()

    def forget(self, uri: str) -> None:
        """Close and drop the connection to ``uri`` (the next call reconnects): only when no
        call uses it (a test:/// host's state goes with it). A connection found dead is
        retired instead (``_retire``)."""
        with self._guard:
            conns = [self._conns.pop(uri, None), *self._free.pop(uri, [])]
        for conn in conns:
            if conn is not None:
                with suppress(libvirt.libvirtError):
                    conn.close()

    def _retire(self, uri: str, dead: libvirt.virConnect | None = None) -> None:
        """Drop the dead connection to ``uri`` (``dead``, or whichever is there) without closing
        it: other threads may still be inside calls on it (libvirt wakes them with an error as
        it closes), and ``virConnectClose`` now would free it under them. Retired connections
        are closed by ``close`` (the worker's end)."""
        with self._guard:
            current = self._conns.get(uri)
            if current is not None and (dead is None or current is dead):
                del self._conns[uri]
                self._retired.append(current)  # (a leased one is retired when given back)

    def close(self) -> None:
        """Close every connection (the worker's end)."""
        for uri in {*self._conns, *self._free}:
            self.forget(uri)
        for conn in self._retired:
            with suppress(libvirt.libvirtError):
                conn.close()
        self._retired.clear()

    def _gate(self, uri: str) -> threading.BoundedSemaphore:
        with self._guard:
            return self._gates.setdefault(
                uri, threading.BoundedSemaphore(self.limits.calls_per_host))

    @contextmanager
    def call(self, op: str, uri: str, host: str, vm: str | None = None, *,
             primary: bool = False) -> Iterator[libvirt.virConnect]:
        """Run libvirt calls against ``uri``; any libvirt error leaves as a typed error.

        The block has a connection of its own (``_lease``), or the primary one (``primary``:
        the host monitor's probe, which also keeps the primary's event subscriptions alive).
        Takes one of the host's ``calls_per_host`` slots for the block; raises
        ``HypervisorUnavailable`` when none frees within ``slot_wait_seconds`` (the host's
        calls are not returning) or the host cannot be connected to in time.
        """
        gate = self._gate(uri)
        target = f"{vm} on {host}" if vm else host
        if not gate.acquire(timeout=self.limits.slot_wait_seconds):
            raise task_error(ErrorType.HYPERVISOR_UNAVAILABLE,
                             f"{op} {target}: {self.limits.calls_per_host} calls to {host} are "
                             f"still waiting for an answer; not waiting longer", host=host, vm=vm)
        conn: libvirt.virConnect | None = None
        try:
            try:
                conn = self.connection(uri) if primary else self._lease(uri)
            except ApplicationError as err:  # the open timed out: name the host and the VM
                raise task_error(ErrorType.HYPERVISOR_UNAVAILABLE, f"{op} {target}: {err.message}",
                                 host=host, vm=vm) from err
            yield conn
        except libvirt.libvirtError as err:
            raise self.translate(err, op=op, uri=uri, host=host, vm=vm, conn=conn) from err
        finally:
            if conn is not None and not primary:
                self._give_back(uri, conn)
            gate.release()

    def translate(self, err: libvirt.libvirtError, *, op: str, uri: str, host: str,
                  vm: str | None, conn: libvirt.virConnect | None = None) -> ApplicationError:
        """``err`` (raised by a call on ``conn``, default the primary connection) as a typed
        error; a dead connection counts as ``HypervisorUnavailable`` and is dropped."""
        code = err.get_error_code() or 0
        conn = conn if conn is not None else self._conns.get(uri)
        lost = conn is None or not _alive(conn)
        if lost:  # only a dead connection is dropped: a test:/// host dies with its connection
            self._retire(uri, conn)
        if code in _UNAVAILABLE or lost:
            kind = ErrorType.HYPERVISOR_UNAVAILABLE
        elif code == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in str(err):
            kind = ErrorType.DUPLICATE_DOMAIN
        else:
            kind = _CLASSES.get(code, ErrorType.HYPERVISOR_ERROR)
        target = f"{vm} on {host}" if vm else host
        message = f"{op} {target}: {err.get_error_message() or err}"
        log.warning("libvirt error", op=op, host=host, vm=vm, code=code, error_type=kind.value,
                    error=str(err))
        return task_error(kind, message, host=host, vm=vm, libvirt_code=code)


def unavailable(message: str, uri: str) -> ApplicationError:
    """``HypervisorUnavailable`` for ``uri`` (no host name known at this level)."""
    log.warning("hypervisor unavailable", uri=uri, error=message)
    return task_error(ErrorType.HYPERVISOR_UNAVAILABLE, message)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    """The domain called ``name``, or None if the hypervisor has none."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
