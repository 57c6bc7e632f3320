"""Moving a domain between two hypervisors: a live or offline migration, or a cold move.

``Migrator.migrate`` picks the way the drivers allow: a live peer-to-peer migration of a running
domain (persisted on the destination, undefined on the source, over the destination's migration
URI), an offline migration of a shut-off one, and, where a driver cannot migrate (libvirt's test
driver), a cold move: save on the source, define and restore on the destination, undefine on the
source. Every way first looks at where the domain actually is, so a re-run after a partial
attempt finishes the move instead of starting a second one.

A migration job is watched every ``WATCH_SECONDS``: its ``jobStats()`` progress goes to the
caller's ``on_progress``; no progress for the progress timeout, the completion timeout, or a
cancellation of the awaiting task aborts the job with ``abortJob()``, and the domain keeps running
on the source. This module knows nothing of Temporal: heartbeats and signals are the caller's
callbacks, and a cancellation arrives as ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.connections import Hypervisors, lookup
from taskomatic.logs import get_logger
from taskomatic.models import MigrateDomainInput, MigrationReport

if TYPE_CHECKING:
    from temporalio.exceptions import ApplicationError

T = TypeVar("T")
log = get_logger(component="migration")

WATCH_SECONDS = 1.0  # how often a migration job is looked at and reported

# ``on_progress(percent, detail)``: a migration job's progress (0 to 99 %, never decreasing) and a
# one-line detail, once every WATCH_SECONDS, awaited on the event loop.
ProgressCallback = Callable[[float, str], Awaitable[None]]
# ``on_step(percent, detail)``: a cold move reached a step (0 % saving, 50 % restoring); called on
# the event loop, in the context of the task that awaits ``Migrator.migrate``.
StepCallback = Callable[[float, str], None]


def can_migrate_live(uri: str) -> bool:
    """Whether the driver behind ``uri`` migrates domains (the test driver does not)."""
    return not uri.startswith("test:")


def save_file(directory: str, uuid: str) -> Path:
    """Where a cold move saves the memory of the domain ``uuid``: ``<directory>/<uuid>.save``."""
    return Path(directory) / f"{uuid}.save"


def migration_flags(inp: MigrateDomainInput, live: bool) -> tuple[int, dict[str, Any]]:
    """The ``migrateToURI3`` flags and typed parameters of a migration.

    Always peer-to-peer, persisted on the destination and undefined on the source; live for a
    running domain (with the bandwidth cap in MiB/s and the destination's migration URI, when
    set), offline for a shut-off one; unsafe only when the limits ask for it.
    """
    flags = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    params: dict[str, Any] = {}
    if live:
        flags |= libvirt.VIR_MIGRATE_LIVE
        if inp.limits.bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = inp.limits.bandwidth_mib_s
        if inp.destination.migration_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = inp.destination.migration_uri
    else:
        flags |= libvirt.VIR_MIGRATE_OFFLINE
    if inp.limits.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return flags, params


def job_running(dom: libvirt.virDomain) -> bool:
    """Whether ``dom`` has a job (a migration) running; a domain gone from the source has none."""
    try:
        return bool(dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:  # gone from the source: the migration finished
        return False


def job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    """``dom.jobStats()`` as a dict (byte counts such as ``data_processed``), or {} if none."""
    try:
        return dict(dom.jobStats())
    except libvirt.libvirtError:
        return {}


def progress_percent(stats: dict[str, Any], before: float) -> float:
    """A job's progress in percent from its ``jobStats()``: never below ``before`` (memory dirtied
    again does not move it back), never above 99 (done is when the job ends), ``before`` when the
    stats give no total."""
    total = stats.get("memory_total") or stats.get("data_total") or 0
    remaining = stats.get("memory_remaining", stats.get("data_remaining", 0))
    if not total:
        return before
    return float(max(before, min(99.0, 100.0 * (1 - remaining / total))))


class Migrator:
    """Moves domains between the worker's hypervisors.

    Migrations block a thread for as long as they run, so the blocking libvirt calls run on a
    thread pool of the migrator's own (``max_threads``), not on the event loop's default one.
    ``save_dir`` is where cold moves save domains unless a request names its own directory.
    """

    def __init__(self, hypervisors: Hypervisors, save_dir: Path | str,
                 max_threads: int = 32) -> None:
        self.hv = hypervisors
        self.save_dir = str(save_dir)
        self._threads = ThreadPoolExecutor(max_workers=max_threads,
                                           thread_name_prefix="migration")

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def migrate(self, inp: MigrateDomainInput, on_progress: ProgressCallback,
                      on_step: StepCallback) -> MigrationReport:
        """Move ``inp.name`` from ``inp.source`` to ``inp.destination``, the way the drivers allow.

        A live or offline migration reports through ``on_progress``, a cold move through
        ``on_step``. Returns the report (``seconds`` left unset); a domain already on the
        destination is a no-op (mode ``none``, not changed). Cancelling the awaiting task aborts a
        running migration job. Errors: ``InvalidRequest`` (source and destination are one host),
        ``DomainNotFound``, ``DuplicateDomain``, ``MigrationFailed``, ``MigrationStalled``,
        ``MigrationTimedOut``, or a libvirt error typed by ``Hypervisors.translate``.
        """
        src, dst = inp.source, inp.destination
        if src.name == dst.name:
            raise task_error(ErrorType.INVALID_REQUEST, f"{inp.name} is already on {src.name}",
                             field="to", host=dst.name, vm=inp.name)
        try:
            if can_migrate_live(src.uri) and can_migrate_live(dst.uri):
                return await self.migrate_live(inp, on_progress)
            return await self._blocking(self.cold_move, inp, _from_thread(on_step))
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

    async def migrate_live(self, inp: MigrateDomainInput, on_progress: ProgressCallback
                           ) -> MigrationReport:
        """A live (running domain) or offline (shut-off one) migration, watched to its end.

        If a previous attempt's job is still running on the source, that job is watched instead
        of starting another. Errors as ``migrate``; libvirt errors of the job itself leave as
        ``libvirt.libvirtError`` (``migrate`` types them with ``failure``).
        """
        src, _dst = await self._blocking(self.where, inp, "migrate")
        if src is None:
            return _report(inp, "none", False, f"already on {inp.destination.name}")
        active = await self._blocking(src.isActive)
        mode = "live" if active else "offline"
        busy = active and await self._blocking(job_running, src)
        job: asyncio.Future[Any] | None = None
        if not busy:  # else a previous attempt's job is still running: watch it instead
            flags, params = migration_flags(inp, live=bool(active))
            job = asyncio.ensure_future(self._blocking(self._run_job, inp, params, flags))
        try:
            await self._watch(inp, src, job, on_progress)
        except asyncio.CancelledError:  # the task was cancelled: stop the job, VM stays put
            await asyncio.shield(self._abort(src, job))
            raise
        return _report(inp, mode, True, f"{mode} migration to {inp.destination.name}"
                       + (" (resumed watching a running job)" if busy else ""))

    def _run_job(self, inp: MigrateDomainInput, params: dict[str, Any], flags: int) -> None:
        """The migration call, on a connection of its own: it blocks until the job ends, and
        meanwhile the job is watched and aborted over the shared connection. (With the call in
        flight on the shared connection, an ``abortJob()`` on it was once seen never to reach
        libvirtd, while one from another connection went through at once.)"""
        with self.hv.private(inp.source.uri) as conn:
            conn.lookupByName(inp.name).migrateToURI3(inp.destination.uri, params, flags)

    async def _watch(self, inp: MigrateDomainInput, dom: libvirt.virDomain,
                     job: asyncio.Future[Any] | None, on_progress: ProgressCallback) -> None:
        lim = inp.limits
        start = last_moved = time.monotonic()
        processed = -1
        percent = 0.0
        while True:
            if job is not None:
                await asyncio.wait([job], timeout=WATCH_SECONDS)
                if job.done():
                    job.result()  # raises the migration's own error
                    return
            else:
                await asyncio.sleep(WATCH_SECONDS)
                if not await self._blocking(job_running, dom):
                    return
            stats = await self._blocking(job_stats, dom)
            now = time.monotonic()
            if stats.get("data_processed", 0) > processed:
                processed, last_moved = stats.get("data_processed", 0), now
            percent = progress_percent(stats, percent)
            detail = (f"{percent:.0f}% ({stats.get('data_remaining', 0) >> 20} MiB left)"
                      if stats else f"{percent:.0f}%")
            await on_progress(percent, detail)
            stalled = now - last_moved > lim.progress_timeout_seconds
            late = now - start > lim.completion_timeout_seconds
            if stalled or late:
                await self._abort(dom, job)
                if job is not None and job.done() and job.exception() is None:
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

    async def _abort(self, dom: libvirt.virDomain, job: asyncio.Future[Any] | None) -> None:
        try:
            await self._blocking(dom.abortJob)
        except libvirt.libvirtError as err:  # the job ended by itself meanwhile
            log.info("abortJob", error=str(err))
        if job is not None:
            await asyncio.wait([job], timeout=30)

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
