"""Aborting a migration job and waiting until it has really ended.

``abort_job`` asks libvirt to abort (``abortJob()``, again every ABORT_AGAIN_SECONDS) and waits
until the call that runs the job has returned or the domain reports no job. Two things can keep
an aborted job alive, and both are bounded here: libvirtd missing QEMU's end of a cancelled
migration (``nudge``), and a job that will not end at all (``MigrationFailed`` after
ABORT_GIVE_UP_SECONDS, where the domain is left for the task's undo to find).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.connections import Hypervisors, lookup
from taskomatic.hypervisor.jobs import WATCH_SECONDS, job_running
from taskomatic.logs import get_logger
from taskomatic.models import MigrateDomainInput

log = get_logger(component="migration")

ABORT_POLL_SECONDS = 0.2  # how often an aborted job is looked at until it has ended
ABORT_AGAIN_SECONDS = 5.0  # an abort that has not taken is asked again this often
ABORT_NUDGE_SECONDS = 3.0  # an aborted job still running this long is nudged (``nudge``)
ABORT_GIVE_UP_SECONDS = 60.0  # ... and given up on this long after the first abort

# ``beat()``: a sign of life while an aborted job winds down, awaited every WATCH_SECONDS.
Beat = Callable[[], Awaitable[None]]
# ``blocking(fn, *args)``: ``fn(*args)`` run on a thread of the caller's, awaited.
Blocking = Callable[..., Awaitable[Any]]


async def abort_job(hv: Hypervisors, blocking: Blocking, inp: MigrateDomainInput,
                    dom: libvirt.virDomain, job: asyncio.Future[None] | None, beat: Beat
                    ) -> None:
    """Abort the domain's migration job and wait until it has really ended: its call
    returned (``job``), or the domain reports no job (or is gone from the source). The abort
    is asked again every ABORT_AGAIN_SECONDS while the job runs; ``beat()`` every
    WATCH_SECONDS meanwhile. A job still running ABORT_NUDGE_SECONDS after the first abort
    is nudged (``nudge``: the domain suspended, resumed once the job has ended);
    one still running after ABORT_GIVE_UP_SECONDS is ``MigrationFailed`` (where the domain
    is is then for the caller's undo to find)."""
    loop = asyncio.get_running_loop()
    first = loop.time()
    asked = beaten = -math.inf
    nudged = False
    while True:
        if loop.time() - asked >= ABORT_AGAIN_SECONDS:
            asked = loop.time()
            try:
                await blocking(dom.abortJob)
            except libvirt.libvirtError as err:  # the job ended by itself meanwhile
                log.info("abortJob", error=str(err))
        if await _job_ended(blocking, dom, job):
            break
        waited = loop.time() - first
        if waited >= ABORT_GIVE_UP_SECONDS:
            raise task_error(ErrorType.MIGRATION_FAILED,
                             f"migration of {inp.name} to {inp.destination.name}: the job "
                             f"did not end within {ABORT_GIVE_UP_SECONDS:g}s of its abort",
                             host=inp.source.name, vm=inp.name)
        if not nudged and waited >= ABORT_NUDGE_SECONDS:
            nudged = await blocking(nudge, dom)
            log.warning("an aborted migration job did not end: domain suspended to wake "
                        "libvirtd", vm=inp.name, suspended=nudged)
        if loop.time() - beaten >= WATCH_SECONDS:
            beaten = loop.time()
            await beat()
    if nudged:
        await blocking(_resume_nudged, hv, inp)


async def _job_ended(blocking: Blocking, dom: libvirt.virDomain,
                     job: asyncio.Future[None] | None) -> bool:
    """Whether the job has ended, waiting up to ABORT_POLL_SECONDS for it to."""
    if job is not None:
        await asyncio.wait([job], timeout=ABORT_POLL_SECONDS)
        return job.done()
    if not await blocking(job_running, dom):
        return True
    await asyncio.sleep(ABORT_POLL_SECONDS)
    return False


def _resume_nudged(hv: Hypervisors, inp: MigrateDomainInput) -> None:
    """Resume the nudged domain wherever the ended job left it (blocking)."""
    for host in (inp.source, inp.destination):
        with suppress(ApplicationError), \
                hv.call("migrate", host.uri, host.name, inp.name) as conn:
            if resume_nudged(lookup(conn, inp.name)):
                log.info("resumed after the nudge", vm=inp.name, host=host.name)


def nudge(dom: libvirt.virDomain) -> bool:
    """Suspend ``dom`` if it runs, so that libvirtd looks at its migration job again; True if
    it was suspended (the caller resumes it once the job has ended: ``resume_nudged``).

    Why: with libvirt 9.0 / QEMU 7.2 an ``abortJob()`` that lands while QEMU waits in the
    ``pre-switchover`` state cancels QEMU's migration, but libvirtd misses it and its migration
    job waits for an event that never comes (seen in the lab: ``domjobinfo`` "Outgoing
    migration" for minutes while QEMU's ``query-migrate`` said ``cancelled``, and the stack of
    libvirtd's migration thread waiting in ``qemuDomainObjWait``). A ``suspend()`` wakes that
    wait: the job then ended at once with "Migration not in expected state: cancelled", the
    domain running on the source. Errors: none (a domain gone or not running is left alone)."""
    try:
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            return False
        dom.suspend()
    except libvirt.libvirtError:
        return False
    return True


def resume_nudged(dom: libvirt.virDomain | None) -> bool:
    """Resume ``dom`` if a ``nudge`` left it paused (libvirtd resumes a domain whose migration
    failed by itself, not always); True if it was resumed. Errors: none."""
    try:
        if dom is None or dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            return False
        dom.resume()
    except libvirt.libvirtError:
        return False
    return True
