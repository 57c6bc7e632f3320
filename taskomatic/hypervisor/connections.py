"""libvirt access: one persistent connection per URI, and libvirt errors made into typed ones.

``virConnect`` objects are safe to share across threads, and the test driver's private hosts
(``test:///path/host.xml``) live exactly as long as their connection, so a worker opens each URI
once and keeps it; a connection found dead is dropped and re-opened on the next call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
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


class Hypervisors:
    """The worker's libvirt connections, keyed by URI."""

    def __init__(self) -> None:
        self._conns: dict[str, libvirt.virConnect] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def connection(self, uri: str) -> libvirt.virConnect:
        """The open connection to ``uri``, opened (or re-opened) as needed."""
        with self._guard:
            lock = self._locks.setdefault(uri, threading.Lock())
        with lock:
            conn = self._conns.get(uri)
            if conn is not None and _alive(conn):
                return conn
            if conn is not None:
                log.warning("libvirt connection lost; reopening", uri=uri)
            conn = libvirt.open(uri)
            self._conns[uri] = conn
            return conn

    @contextmanager
    def private(self, uri: str) -> Iterator[libvirt.virConnect]:
        """A connection to ``uri`` of the caller's own, closed afterwards: for one call that
        blocks for a long time (a migration) while other threads use the shared one. Not for
        ``test:///`` hosts, whose state lives in the shared connection."""
        conn = libvirt.open(uri)
        try:
            yield conn
        finally:
            with suppress(libvirt.libvirtError):
                conn.close()

    def forget(self, uri: str) -> None:
        """Drop a connection that failed, so the next call reconnects."""
        with self._guard:
            conn = self._conns.pop(uri, None)
        if conn is not None:
            with suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        for uri in list(self._conns):
            self.forget(uri)

    @contextmanager
    def call(self, op: str, uri: str, host: str, vm: str | None = None
             ) -> Iterator[libvirt.virConnect]:
        """Run libvirt calls against ``uri``; any libvirt error leaves as a typed error."""
        try:
            yield self.connection(uri)
        except libvirt.libvirtError as err:
            raise self.translate(err, op=op, uri=uri, host=host, vm=vm) from err

    def translate(self, err: libvirt.libvirtError, *, op: str, uri: str, host: str,
                  vm: str | None) -> ApplicationError:
        code = err.get_error_code() or 0
        conn = self._conns.get(uri)
        lost = conn is None or not _alive(conn)
        if lost:  # only a dead connection is dropped: a test:/// host dies with its connection
            self.forget(uri)
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
