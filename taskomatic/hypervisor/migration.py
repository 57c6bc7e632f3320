"""Moving a domain between two hypervisors: a live or offline migration, or a cold move.

``Migrator.migrate`` picks the way the drivers allow: a live peer-to-peer migration of a running
domain (persisted on the destination, undefined on the source, over the destination's migration
URI), an offline migration of a shut-off one, and, where a driver cannot migrate (libvirt's test
driver), a cold move: save on the source, define and restore on the destination, undefine on the
source. Every way first looks at where the domain actually is, so a re-run after a partial
attempt finishes the move instead of starting a second one.

A migration job is watched every ``WATCH_SECONDS``: its ``jobStats()`` progress goes to the
caller's ``on_progress``; no progress for the progress timeout, the completion timeout, or a
cancellation of the awaiting task aborts the job with ``abortJob()`` and waits until the job has
really ended. A move's outcome is the hypervisors' (``job_outcome``): once the job has ended, the
domain on the destination is a move, the domain still on the source is a failure with the job's
own error when libvirt gives one — whether this call started the job or found an earlier
attempt's job running and watched it. This module knows nothing of Temporal: heartbeats and
signals are the caller's callbacks, a cancellation arrives as ``asyncio.CancelledError``, and
whether it should abort the job is the caller's ``abort_on_cancel()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.aborts import Beat, abort_job
from taskomatic.hypervisor.connections import Hypervisors, lookup
from taskomatic.hypervisor.jobs import (
    WATCH_SECONDS,
    JobOutcome,
    call_error,
    job_outcome,
    job_running,
    job_stats,
    migration_flags,
    progress_percent,
    to_its_end,
)
from taskomatic.hypervisor.storage_copy import retargeted_xml
from taskomatic.logs import get_logger
from taskomatic.metrics import MIGRATION_BYTES
from taskomatic.models import MigrateDomainInput, MigrationReport

T = TypeVar("T")
log = get_logger(component="migration")


# ``on_progress(percent, detail)``: a migration job's progress (0 to 99 %, never decreasing) and a
# one-line detail, once every WATCH_SECONDS, awaited on the event loop.
ProgressCallback = Callable[[float, str], Awaitable[None]]
# ``on_step(percent, detail)``: a cold move reached a step (0 % saving, 50 % restoring); called on
# the event loop, in the context of the task that awaits ``Migrator.migrate``.
StepCallback = Callable[[float, str], None]
# ``abort_on_cancel()``: asked when the awaiting task is cancelled; True (a cancel of the task)
# aborts the job, False (a worker that stops) lets it go on, for the next attempt to watch.
AbortOnCancel = Callable[[], bool]


def can_migrate_live(uri: str) -> bool:
    """Whether the driver behind ``uri`` migrates domains (the test driver does not)."""
    return not uri.startswith("test:")


def save_file(directory: str, uuid: str) -> Path:
    """Where a cold move saves the memory of the domain ``uuid``: ``<directory>/<uuid>.save``."""
    return Path(directory) / f"{uuid}.save"


class Migrator:
    """Moves domains between the worker's hypervisors.

    Migrations block a thread for as long as they run, so the blocking libvirt calls run on a
    thread pool of the migrator's own (``max_threads``), not on the event loop's default one.
    ``save_dir`` is where cold moves save domains unless a request names its own directory.
    The migration jobs this migrator started and that still run are kept by source URI and
    domain name, so a later attempt at the same move watches the same call (and gets its error).
    """

    def __init__(self, hypervisors: Hypervisors, save_dir: Path | str,
                 max_threads: int = 32) -> None:
        self.hv = hypervisors
        self.save_dir = str(save_dir)
        self._threads = ThreadPoolExecutor(max_workers=max_threads,
                                           thread_name_prefix="migration")
        self._jobs: dict[tuple[str, str], tuple[str, asyncio.Future[None]]] = {}

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def migrate(self, inp: MigrateDomainInput, on_progress: ProgressCallback,
                      on_step: StepCallback, abort_on_cancel: AbortOnCancel = lambda: True
                      ) -> MigrationReport:
        """Move ``inp.name`` from ``inp.source`` to ``inp.destination``, the way the drivers allow.

        A live or offline migration reports through ``on_progress``, a cold move through
        ``on_step``. Returns the report (``seconds`` left unset); a domain already on the
        destination is a no-op (mode ``none``, not changed). Cancelling the awaiting task: a
        migration job is aborted if ``abort_on_cancel()`` (see ``migrate_live``), a cold move
        (which cannot be aborted) runs to its end; either is reported if it completed, else the
        cancellation is raised once it has ended. Errors: ``InvalidRequest`` (source and
        destination are one host), ``DomainNotFound``, ``DuplicateDomain``, ``MigrationFailed``,
        ``MigrationStalled``, ``MigrationTimedOut``, or a libvirt error typed by
        ``Hypervisors.translate``.
        """
        src, dst = inp.source, inp.destination
        if src.name == dst.name:
            raise task_error(ErrorType.INVALID_REQUEST, f"{inp.name} is already on {src.name}",
                             field="to", host=dst.name, vm=inp.name)
        try:
            if can_migrate_live(src.uri) and can_migrate_live(dst.uri):
                return await self.migrate_live(inp, on_progress, abort_on_cancel)
            return await to_its_end(self._blocking(self.cold_move, inp, _from_thread(on_step)))
        except libvirt.libvirtError as err:  # a call on a domain object, outside hv.call
            raise self.failure(inp, err) from err

    def where(self, inp: MigrateDomainInput, op: str
              ) -> tuple[libvirt.virDomain | None, libvirt.virDomain | None]:
        """The domain on the source and on the destination (None where absent).

        Errors: ``DuplicateDomain`` if both hold one of that name with different UUIDs,
        ``DomainNotFound`` if neither holds it; ``op`` names the action in libvirt errors.
        """
        with self.hv.call(op, inp.source.uri, inp.source.name, inp.name) as conn:
            src = lookup(conn, inp.name)
        with self.hv.call(op, inp.destination.uri, inp.destination.name, inp.name) as conn:
            dst = lookup(conn, inp.name)
        if src is not None and dst is not None and src.UUIDString() != dst.UUIDString():
            raise task_error(ErrorType.DUPLICATE_DOMAIN,
                             f"a different domain {inp.name!r} exists on {inp.destination.name}",
                             field="to", host=inp.destination.name, vm=inp.name)
        if src is None and dst is None:
            raise task_error(ErrorType.DOMAIN_NOT_FOUND,
                             f"no domain {inp.name!r} on {inp.source.name} nor on "
                             f"{inp.destination.name}", host=inp.source.name, vm=inp.name)
        return src, dst

    def cold_move(self, inp: MigrateDomainInput, on_step: StepCallback) -> MigrationReport:
        """Save → define + restore on the destination → undefine on the source (blocking; call
        it from a thread). Each step is skipped when already done, so a re-run resumes a move cut
        short; ``on_step`` is called here, on this thread. Mode ``cold`` if the domain was saved
        and restored, ``offline`` if it was only redefined. Errors as ``migrate``; a domain
        running on both hosts is a ``MigrationFailed`` rather than a second run."""
        src, dst = self.where(inp, "move")
        if src is None:
            return _report(inp, "none", False, f"already on {inp.destination.name}")
        save = save_file(inp.save_dir or self.save_dir, src.UUIDString())
        with self.hv.call("move", inp.source.uri, inp.source.name, inp.name):
            xml = src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            if src.isActive() and (dst is None or not dst.isActive()):
                on_step(0.0, "saving on the source")
                save.parent.mkdir(parents=True, exist_ok=True)
                src.save(str(save))
        saved = save.exists()
        with self.hv.call("move", inp.destination.uri, inp.destination.name, inp.name) as conn:
            if dst is None:
                dst = conn.defineXML(xml)
            if saved and not dst.isActive():
                on_step(50.0, "restoring on the destination")
                conn.restore(str(save))
        with self.hv.call("move", inp.source.uri, inp.source.name, inp.name):
            if src.isActive():  # cannot be after a save; refuse rather than run it twice
                raise task_error(ErrorType.MIGRATION_FAILED,
                                 f"{inp.name} runs on both {inp.source.name} and "
                                 f"{inp.destination.name}", host=inp.source.name, vm=inp.name)
            src.undefine()
        save.unlink(missing_ok=True)
        mode = "cold" if saved else "offline"
        return _report(inp, mode, True, f"{'saved, restored' if saved else 'redefined'} on "
                                        f"{inp.destination.name}")

    async def migrate_live(self, inp: MigrateDomainInput, on_progress: ProgressCallback,
                           abort_on_cancel: AbortOnCancel = lambda: True) -> MigrationReport:
        """A live (running domain) or offline (shut-off one) migration, watched to its end.

        A job of the domain already running on the source (an earlier attempt's) is watched
        instead of starting another when it goes to this destination (which then holds the
        incoming domain), and aborted first when it goes elsewhere (an attempt the task gave up
        on). Once the job has ended, the hypervisors say how it went (``settle``): on the
        destination, the report; still on the source, ``MigrationFailed`` with the job's error.

        Cancelling the awaiting task: if ``abort_on_cancel()``, the job is aborted, and once it
        has really ended the cancellation is raised — or, if the move completed first, it is
        reported; otherwise (a stopping worker) the job goes on and the cancellation is raised
        at once. Errors as ``migrate``; a libvirt error of the job with the domain still on the
        source is typed by ``failure``.
        """
        src, dst = await self._blocking(self.where, inp, "migrate")
        if src is None:
            return _report(inp, "none", False, f"already on {inp.destination.name}")
        active = bool(await self._blocking(src.isActive))
        mode = "live" if active else "offline"
        resumed = active and await self._blocking(job_running, src)
        if resumed and dst is None:  # a job to another host: stop it, then move from scratch
            log.warning("aborting a migration job to another host", vm=inp.name)
            await self._abort(inp, src, None, partial(on_progress, 0.0,
                                                      "stopping an earlier job"))
            return await self.migrate_live(inp, on_progress, abort_on_cancel)
        job = self._job_of(inp) if resumed else self._start(inp, live=active)
        try:
            await self._watch(inp, src, job, on_progress)
        except asyncio.CancelledError:
            if not abort_on_cancel():
                raise  # a stopping worker: the job goes on; the task's next attempt watches it
            outcome = await asyncio.shield(self._cancel(inp, src, job, on_progress))
            if not outcome.moved:
                raise
            return _report(inp, mode, True, f"{mode} migration to {inp.destination.name} "
                                            "(completed before the cancel took)")
        outcome = await self._blocking(self.settle, inp, job)
        if not outcome.moved:
            err = call_error(job)
            if err is not None:
                raise self.failure(inp, err) from err
            raise task_error(ErrorType.MIGRATION_FAILED, f"migration of {inp.name} to "
                             f"{inp.destination.name}: {outcome.why}", host=inp.source.name,
                             vm=inp.name)
        return _report(inp, mode, True, f"{mode} migration to {inp.destination.name}"
                       + (" (resumed watching a running job)" if resumed else ""))

    def settle(self, inp: MigrateDomainInput, job: asyncio.Future[None] | None) -> JobOutcome:
        """What an ended migration job did, from where the domain is now and the source's
        stats of the ended job (blocking). ``job``: the call that ran it, if this migrator made
        it (its error is the job's). A destination that cannot be asked does not matter when the
        domain runs on the source. Errors: as typed by ``Hypervisors.call``."""
        src, dst = inp.source, inp.destination
        with self.hv.call("migrate", src.uri, src.name, inp.name) as conn:
            dom = lookup(conn, inp.name)
            on_source = None if dom is None else bool(dom.isActive())
            completed = {} if dom is None else job_stats(
                dom, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        try:
            with self.hv.call("migrate", dst.uri, dst.name, inp.name) as conn:
                dom = lookup(conn, inp.name)
                on_destination = None if dom is None else bool(dom.isActive())
        except ApplicationError as err:
            if not on_source or err.type != ErrorType.HYPERVISOR_UNAVAILABLE:
                raise
            on_destination = None  # it runs on the source: not moved, whatever is there
        failed = call_error(job)
        return job_outcome(on_source, on_destination, completed,
                           None if failed is None else failed.get_error_message() or str(failed))

    def _start(self, inp: MigrateDomainInput, live: bool) -> asyncio.Future[None]:
        """Start the migration call in a thread; kept in ``_jobs`` until it returns."""
        flags, params = migration_flags(inp, live=live)
        key = (inp.source.uri, inp.name)
        job = asyncio.ensure_future(self._blocking(self._run_job, inp, params, flags))
        self._jobs[key] = (inp.destination.name, job)

        def ended(done: asyncio.Future[None]) -> None:
            if self._jobs.get(key, ("", None))[1] is done:
                del self._jobs[key]
            err = None if done.cancelled() else done.exception()
            log.info("migration job ended", vm=inp.name, destination=inp.destination.name,
                     error=None if err is None else str(err))

        job.add_done_callback(ended)
        return job

    def _job_of(self, inp: MigrateDomainInput) -> asyncio.Future[None] | None:
        """The running call this migrator made for this move (same destination), if any."""
        destination, job = self._jobs.get((inp.source.uri, inp.name), ("", None))
        return job if destination == inp.destination.name else None

    def _run_job(self, inp: MigrateDomainInput, params: dict[str, Any], flags: int) -> None:
        """The migration call, on a connection of its own: it blocks until the job ends, and
        meanwhile the job is watched and aborted over the shared connection. (With the call in
        flight on the shared connection, an ``abortJob()`` on it was once seen never to reach
        libvirtd, while one from another connection went through at once.)"""
        with self.hv.private(inp.source.uri) as conn:
            dom = conn.lookupByName(inp.name)
            if inp.storage.copies:  # the destination's domain uses the copies
                params = {**params, libvirt.VIR_MIGRATE_PARAM_DEST_XML: retargeted_xml(
                    dom, inp.storage.copies)}
            dom.migrateToURI3(inp.destination.uri, params, flags)

    async def _watch(self, inp: MigrateDomainInput, dom: libvirt.virDomain,
                     job: asyncio.Future[None] | None, on_progress: ProgressCallback) -> None:
        """Until the job has ended (its call returned, or the domain reports no job), report its
        progress; abort it when stalled or late (``MigrationStalled``/``MigrationTimedOut``,
        unless it completed before the abort took)."""
        lim = inp.limits
        start = last_moved = time.monotonic()
        processed = -1
        percent = 0.0
        while True:
            if job is not None:
                await asyncio.wait([job], timeout=WATCH_SECONDS)
                if job.done():
                    return
            else:
                await asyncio.sleep(WATCH_SECONDS)
                if not await self._blocking(job_running, dom):
                    return
            stats = await self._blocking(job_stats, dom)
            now = time.monotonic()
            # data_processed counts memory and disks; a job may not report it yet (no stats, or
            # a storage copy's first phase): progress is then the disk bytes alone.
            done = stats.get("data_processed", stats.get("disk_processed", 0))
            if done > processed:
                MIGRATION_BYTES.inc(done - max(processed, 0))
                processed, last_moved = done, now
            percent = progress_percent(stats, percent)
            detail = (f"{percent:.0f}% ({stats.get('data_remaining', 0) >> 20} MiB left)"
                      if stats else f"{percent:.0f}%")
            await on_progress(percent, detail)
            stalled = now - last_moved > lim.progress_timeout_seconds
            late = now - start > lim.completion_timeout_seconds
            if stalled or late:
                await self._abort(inp, dom, job, partial(on_progress, percent, "aborting"))
                if (await self._blocking(self.settle, inp, job)).moved:
                    return  # it finished before the abort took: a completed migration
                if stalled:
                    kind = ErrorType.MIGRATION_STALLED
                    why = f"no progress for {lim.progress_timeout_seconds:g}s"
                else:
                    kind = ErrorType.MIGRATION_TIMED_OUT
                    why = f"not done after {lim.completion_timeout_seconds:g}s"
                raise task_error(kind, f"migration of {inp.name} to {inp.destination.name}: "
                                       f"{why} at {percent:.0f}%; aborted",
                                 host=inp.source.name, vm=inp.name)

    async def _cancel(self, inp: MigrateDomainInput, dom: libvirt.virDomain,
                      job: asyncio.Future[None] | None, on_progress: ProgressCallback
                      ) -> JobOutcome:
        """The task was cancelled: abort the job, and once it has ended, what it did. Where the
        domain is, if the hypervisors cannot tell now, is left to the task's undo to find."""
        await self._abort(inp, dom, job,
                          partial(on_progress, 0.0, "cancelled: aborting the job"))
        try:
            return await self._blocking(self.settle, inp, job)
        except (ApplicationError, libvirt.libvirtError) as err:
            log.warning("cancelled migration: where the domain is is not known", vm=inp.name,
                        error=str(err))
            return JobOutcome(False, str(err))

    async def _abort(self, inp: MigrateDomainInput, dom: libvirt.virDomain,
                     job: asyncio.Future[None] | None, beat: Beat) -> None:
        """Abort the job and wait until it has really ended (``aborts.abort_job``)."""
        await abort_job(self.hv, self._blocking, inp, dom, job, beat)

    def failure(self, inp: MigrateDomainInput, err: libvirt.libvirtError) -> ApplicationError:
        """A libvirt error of a migration as a typed error: ``HypervisorUnavailable`` (and the
        like, by ``Hypervisors.translate``) if the source's connection died, else
        ``MigrationFailed`` with libvirt's message and code."""
        code = err.get_error_code() or 0
        try:
            alive = bool(self.hv.connection(inp.source.uri).isAlive())
        except libvirt.libvirtError:
            alive = False
        if not alive:
            return self.hv.translate(err, op="migrate", uri=inp.source.uri,
                                     host=inp.source.name, vm=inp.name)
        return task_error(ErrorType.MIGRATION_FAILED,
                          f"migration of {inp.name} to {inp.destination.name}: "
                          f"{err.get_error_message() or err}", host=inp.source.name,
                          vm=inp.name, libvirt_code=code)


def _report(inp: MigrateDomainInput, mode: str, changed: bool, detail: str) -> MigrationReport:
    return MigrationReport(name=inp.name, source=inp.source.name,
                           destination=inp.destination.name, mode=mode, changed=changed,
                           detail=detail)


def _from_thread(on_step: StepCallback) -> StepCallback:
    """``on_step`` made callable from a worker thread: each call is handed to the running event
    loop and runs there in the caller's context (so context variables it reads still hold)."""
    loop, ctx = asyncio.get_running_loop(), contextvars.copy_context()

    def step(percent: float, detail: str) -> None:
        loop.call_soon_threadsafe(on_step, percent, detail, context=ctx)

    return step
