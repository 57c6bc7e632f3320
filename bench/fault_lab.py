"""The fault runs (``bench.faults``) on a lab (``lab.control``): real libvirtd hosts with QEMU
(TCG) guests and live migrations.

- ``LabHosts``: the ``RunHosts`` of a lab. Every run uses all its hosts, the source turning
  (run 0 clears the first host, run 1 the second, ...); ``kill`` is SIGKILL of a host's libvirtd
  (its guests run on, as on a real daemon crash), ``revive`` starts it again as the lab did.
- ``follow_migrations``: which migrations are in flight, as libvirt shows them (a worker process
  runs the moves, so the rig cannot watch them from inside): ``before-move`` while the domain is
  defined on the source and on its destination (the live migration job runs), ``after-move``
  once it runs on the destination and is gone from the source while the inventory still records
  it on the source (its task has not recorded the move yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager

import libvirt

from bench.fault_checks import HostLike
from bench.fault_plans import Shape
from bench.fault_worker import POLL_SECONDS, InFlight, Phases
from lab.hosts import daemon_argv
from lab.models import LabHost, LabState
from lab.register import empty_host
from lab.state import pid_alive, read_pid, save_state
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.states import HostTransition

REVIVE_SECONDS = 60.0
PR_SET_PDEATHSIG = 1

# A lab run: 12 disk-less SeaBIOS guests of 128-512 MiB, whose live migrations take about 1.3 to
# 2.3 s each at 1 MiB/s (measured here), three at a time; a fault aimed at a phase of a move
# strikes within 0.05 s of seeing it (an after-move phase lasts only until the task records it).
LAB_SHAPE = Shape(vms=12, hosts=3, parallel=3, move_seconds=0.0, phase_seconds=0.1,
                  settle_seconds=180.0, memory_mib=(128, 256, 512), bandwidth_mib_s=1)


class LabHosts:
    """The hosts of the lab ``state`` (registered in ``db``'s inventory) for every run; ``hv``
    holds the rig's connections to them. Runs turn the source: run ``n`` clears host ``n mod
    len(hosts)``. A killed daemon is started again by ``revive`` as a child of this process
    (it dies with the thread that called ``revive``), and the lab's state learns its pid, so
    ``lab down`` stops it."""

    def __init__(self, db: Database, hv: Hypervisors, state: LabState) -> None:
        self.db, self.hv, self.state = db, hv, state
        self.runs = 0
        self._daemons: list[subprocess.Popen[bytes]] = []

    def make(self, prefix: str) -> list[LabHost]:
        hosts = list(self.state.hosts)
        turn = self.runs % len(hosts)
        self.runs += 1
        for host in hosts:
            inventory.set_host_state(self.db, host.name, HostTransition.ACTIVATE)
        return hosts[turn:] + hosts[:turn]

    def retire(self, hosts: Sequence[HostLike]) -> None:
        """Destroy and undefine every domain of the hosts; forget their VM rows, and the
        reservations and claims a run left on them (already reported as violations)."""
        names = [h.name for h in hosts]
        for host in hosts:
            empty_host(self.db, self.hv.connection(host.uri), host.name)
        for claim in ordering.queue(self.db):
            if claim.resource.partition(":")[2] in names:
                ordering.release(self.db, claim.task_id)

    def kill(self, host: HostLike) -> None:
        """SIGKILL of ``host``'s libvirtd; returns once it is gone. Its guests run on."""
        lab_host = self._lab_host(host)
        pid = read_pid(lab_host.dir / "libvirtd.pid")
        if pid is None or not pid_alive(pid):
            raise RuntimeError(f"libvirtd of {host.name} is not running")
        signal_pid(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd {pid} of {host.name} survived SIGKILL")
            for proc in self._daemons:
                proc.poll()  # reap a revived daemon of ours
            time.sleep(0.02)

    def revive(self, host: HostLike) -> None:
        """Start ``host``'s libvirtd again, as the lab's supervisor started it; returns once it
        answers (``RuntimeError`` after ``REVIVE_SECONDS``)."""
        lab_host = self._lab_host(host)
        (lab_host.dir / "exited").unlink(missing_ok=True)
        with (lab_host.dir / "daemon.log").open("ab") as log:
            proc = subprocess.Popen(daemon_argv(lab_host, self.state.cache_dir / "libvirt"),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_caller())
        self._daemons.append(proc)
        lab_host.pid = proc.pid
        save_state(self.state)
        deadline = time.monotonic() + REVIVE_SECONDS
        while not _answers(lab_host):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd of {host.name} did not come back "
                                   f"(see {lab_host.dir / 'daemon.log'})")
            time.sleep(0.05)

    def _lab_host(self, host: HostLike) -> LabHost:
        return next(h for h in self.state.hosts if h.name == host.name)


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _die_with_caller() -> Callable[[], object]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _answers(host: LabHost) -> bool:
    try:
        conn = libvirt.open(host.uri)
    except libvirt.libvirtError:
        return False
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
    return True


# --- migrations in flight, from libvirt ------------------------------------------------------


def migrations_now(hv: Hypervisors, db: Database, source: HostLike,
                   hosts: Sequence[HostLike], vms: Collection[str],
                   dead: set[str] | None = None) -> Phases:
    """The migrations of ``vms`` off ``source`` in flight now (see the module's docstring). A
    host that cannot be asked (killed) is left out, and added to ``dead``, whose hosts are not
    asked again."""
    dead = set() if dead is None else dead
    where: dict[str, dict[str, bool]] = {}  # vm → host → running
    for host in hosts:
        if host.name in dead:
            continue
        try:
            doms = hv.connection(host.uri).listAllDomains()
        except libvirt.libvirtError:
            dead.add(host.name)
            continue
        for dom in doms:
            try:
                if dom.name() in vms:
                    where.setdefault(dom.name(), {})[host.name] = bool(dom.isActive())
            except libvirt.libvirtError:  # gone since it was listed (its move ended)
                continue
    found: Phases = {}
    for vm, there in where.items():
        others = [h for h in there if h != source.name]
        if not others:
            continue
        destination = others[0]
        if source.name in there:
            moved = there[destination] and not there[source.name]
            found[vm] = InFlight("after-move" if moved else "before-move", source.name,
                                 destination)
            continue
        row = inventory.get_vm(db, vm)
        if row is not None and row.vm.host == source.name:
            found[vm] = InFlight("after-move", source.name, destination)
    return found


@asynccontextmanager
async def follow_migrations(hv: Hypervisors, db: Database, hosts: Sequence[HostLike],
                            vms: Collection[str], phases: Phases) -> AsyncIterator[None]:
    """Keep ``phases`` equal to ``migrations_now`` (off ``hosts[0]``) while the block runs; a
    host that stops answering (killed) is not asked again in the block."""
    dead: set[str] = set()

    async def follow() -> None:
        while True:
            now = await asyncio.to_thread(migrations_now, hv, db, hosts[0], hosts, vms, dead)
            phases.clear()
            phases.update(now)
            await asyncio.sleep(POLL_SECONDS)

    task = asyncio.ensure_future(follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        phases.clear()
