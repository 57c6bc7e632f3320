"""Hypervisor activities of moving VMs: migrate one domain, find where one is, list a host's.

``migrate_domain`` picks the way the drivers allow: a live peer-to-peer migration of a running VM
(persisted on the destination, undefined on the source, over the destination's migration URI), an
offline migration of a shut-off one, and, where the driver cannot migrate (libvirt's test driver),
a cold move: save on the source, define and restore on the destination, undefine on the source.
Every way first looks at where the domain actually is, so a re-run after a partial attempt
finishes the move instead of starting a second one.

A live migration is watched every second: ``jobStats()`` progress is heartbeated and signalled to
the workflow; no progress for the progress timeout, the completion timeout, or a cancellation of
the task (delivered by the heartbeat) aborts the job with ``abortJob()``, and the VM keeps
running on the source.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import libvirt
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors, lookup, power_state
from taskomatic.hypervisor.domain_xml import shape_of
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    ConfirmMoveInput,
    DomainWhereabouts,
    HostDomain,
    HostDomains,
    HostRef,
    LocateDomainInput,
    MigrateDomainInput,
    MigrationProgressSignal,
    MigrationReport,
    MoveConfirmation,
    RecordMoveInput,
    VmState,
)
from taskomatic.settings import Settings

T = TypeVar("T")
log = get_logger(component="migration")

WATCH_SECONDS = 1.0  # how often a migration job is looked at, heartbeated and signalled
PROGRESS_SIGNAL = "migration_progress"


def can_migrate_live(uri: str) -> bool:
    """Whether the driver behind ``uri`` migrates domains (the test driver does not)."""
    return not uri.startswith("test:")


class MigrationActivities:
    """Moving domains between the worker's hypervisors; signals progress to the calling task."""

    def __init__(self, hypervisors: Hypervisors, db: Database, settings: Settings,
                 client: Client) -> None:
        self.hv = hypervisors
        self.db = db
        self.settings = settings
        self.client = client
        # Migrations block a thread for as long as they run: their own pool, not the loop's.
        self._threads = ThreadPoolExecutor(max_workers=32, thread_name_prefix="migration")

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    # --- migrate ---------------------------------------------------------------------------

    @activity.defn
    async def migrate_domain(self, inp: MigrateDomainInput) -> MigrationReport:
        started = time.monotonic()
        src, dst = inp.source, inp.destination
        if src.name == dst.name:
            raise task_error(ErrorType.INVALID_REQUEST, f"{inp.name} is already on {src.name}",
                             field="to", host=dst.name, vm=inp.name)
        try:
            if can_migrate_live(src.uri) and can_migrate_live(dst.uri):
                report = await self._migrate(inp)
            else:
                report = await self._blocking(self._cold_move, inp, self._beat_from_thread())
        except libvirt.libvirtError as err:  # a call on a domain object, outside hv.call
            raise self._failed(inp, err) from err
        report.seconds = round(time.monotonic() - started, 3)
        get_logger(vm=inp.name, host=src.name).info("migration", destination=dst.name,
                                                    mode=report.mode, detail=report.detail,
                                                    seconds=report.seconds)
        return report

    def _beat_from_thread(self) -> Callable[[dict[str, Any]], None]:
        """A heartbeat callable for a worker thread (an async activity heartbeats on its loop)."""
        loop, ctx = asyncio.get_running_loop(), contextvars.copy_context()

        def beat(details: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(activity.heartbeat, details, context=ctx)

        return beat

    def _where(self, inp: MigrateDomainInput, op: str
               ) -> tuple[libvirt.virDomain | None, libvirt.virDomain | None]:
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

    def _report(self, inp: MigrateDomainInput, mode: str, changed: bool, detail: str
                ) -> MigrationReport:
        return MigrationReport(name=inp.name, source=inp.source.name,
                               destination=inp.destination.name, mode=mode,
                               changed=changed, detail=detail)

    def _cold_move(self, inp: MigrateDomainInput, beat: Callable[[dict[str, Any]], None]
                   ) -> MigrationReport:
        """Save → define + restore on the destination → undefine on the source; each step is
        skipped when already done, so a re-run resumes a move cut short."""
        src, dst = self._where(inp, "move")
        if src is None:
            return self._report(inp, "none", False, f"already on {inp.destination.name}")
        save = save_file(inp.save_dir or str(self.settings.migration_save_dir), src.UUIDString())
        with self.hv.call("move", inp.source.uri, inp.source.name, inp.name):
            xml = src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            if src.isActive() and (dst is None or not dst.isActive()):
                beat({"percent": 0.0, "detail": "saving on the source"})
                save.parent.mkdir(parents=True, exist_ok=True)
                src.save(str(save))
        saved = save.exists()
        with self.hv.call("move", inp.destination.uri, inp.destination.name, inp.name) as conn:
            if dst is None:
                dst = conn.defineXML(xml)
            if saved and not dst.isActive():
                beat({"percent": 50.0, "detail": "restoring on the destination"})
                conn.restore(str(save))
        with self.hv.call("move", inp.source.uri, inp.source.name, inp.name):
            if src.isActive():  # cannot be after a save; refuse rather than run it twice
                raise task_error(ErrorType.MIGRATION_FAILED,
                                 f"{inp.name} runs on both {inp.source.name} and "
                                 f"{inp.destination.name}", host=inp.source.name, vm=inp.name)
            src.undefine()
        save.unlink(missing_ok=True)
        mode = "cold" if saved else "offline"
        return self._report(inp, mode, True, f"{'saved, restored' if saved else 'redefined'} on "
                                             f"{inp.destination.name}")

    async def _migrate(self, inp: MigrateDomainInput) -> MigrationReport:
        src, _dst = await self._blocking(self._where, inp, "migrate")
        if src is None:
            return self._report(inp, "none", False, f"already on {inp.destination.name}")
        active = await self._blocking(src.isActive)
        mode = "live" if active else "offline"
        busy = active and await self._blocking(_job_running, src)
        job: asyncio.Future[Any] | None = None
        if not busy:  # else a previous attempt's job is still running: watch it instead
            flags, params = migration_flags(inp, live=bool(active))
            job = asyncio.ensure_future(self._blocking(self._run_job, inp, params, flags))
        try:
            await self._watch(inp, src, job)
        except asyncio.CancelledError:  # the task was cancelled: stop the job, VM stays put
            await asyncio.shield(self._abort(src, job))
            raise
        return self._report(inp, mode, True, f"{mode} migration to {inp.destination.name}"
                            + (" (resumed watching a running job)" if busy else ""))

    def _run_job(self, inp: MigrateDomainInput, params: dict[str, Any], flags: int) -> None:
        """The migration call, on a connection of its own: it blocks until the job ends, and
        meanwhile the job is watched and aborted over the shared connection. (With the call in
        flight on the shared connection, an ``abortJob()`` on it was once seen never to reach
        libvirtd, while one from another connection went through at once.)"""
        with self.hv.private(inp.source.uri) as conn:
            conn.lookupByName(inp.name).migrateToURI3(inp.destination.uri, params, flags)

    async def _watch(self, inp: MigrateDomainInput, dom: libvirt.virDomain,
                     job: asyncio.Future[Any] | None) -> None:
        lim = inp.limits
        start = last_moved = time.monotonic()
        processed = -1
        percent = 0.0
        signalled = -1.0
        while True:
            if job is not None:
                await asyncio.wait([job], timeout=WATCH_SECONDS)
                if job.done():
                    job.result()  # raises the migration's own error
                    return
            else:
                await asyncio.sleep(WATCH_SECONDS)
                if not await self._blocking(_job_running, dom):
                    return
            stats = await self._blocking(_job_stats, dom)
            now = time.monotonic()
            if stats.get("data_processed", 0) > processed:
                processed, last_moved = stats.get("data_processed", 0), now
            percent = _percent(stats, percent)
            detail = (f"{percent:.0f}% ({stats.get('data_remaining', 0) >> 20} MiB left)"
                      if stats else f"{percent:.0f}%")
            activity.heartbeat({"percent": percent, "detail": detail})
            if percent - signalled >= 1.0:
                signalled = percent
                await self._signal(MigrationProgressSignal(percent=percent, detail=detail))
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

    async def _signal(self, progress: MigrationProgressSignal) -> None:
        workflow_id = activity.info().workflow_id
        if workflow_id is None:
            return
        try:
            handle = self.client.get_workflow_handle(workflow_id)
            await handle.signal(PROGRESS_SIGNAL, progress)
        except RPCError as err:  # progress is a courtesy; the migration goes on
            log.info("progress signal not delivered", error=str(err))

    def _failed(self, inp: MigrateDomainInput, err: libvirt.libvirtError) -> ApplicationError:
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

    # --- where is it -----------------------------------------------------------------------

    @activity.defn
    def confirm_move(self, inp: ConfirmMoveInput) -> MoveConfirmation:
        """Where does the VM run after a move (or a failed one)? The inventory is set to match in
        this same step: on the destination, its row moves there and the reservation goes; still
        on the source (resumed if a cold move left it saved), the destination's reservation is
        released. Anywhere else, or nowhere, is an error."""
        where = self.locate_domain(LocateDomainInput(
            name=inp.name, hosts=[inp.source, inp.destination], save_dir=inp.save_dir,
            recover_on=inp.source.name))
        if where.host is None:
            raise task_error(ErrorType.DOMAIN_NOT_FOUND,
                             f"{inp.name} is on neither {inp.source.name} nor "
                             f"{inp.destination.name}", host=inp.source.name, vm=inp.name)
        state = where.state or VmState.UNKNOWN
        if where.host == inp.destination.name:
            inventory.record_move(self.db, RecordMoveInput(
                task_id=inp.task_id, name=inp.name, source=inp.source.name,
                destination=inp.destination.name, state=state))
            return MoveConfirmation(name=inp.name, host=where.host, state=state, moved=True,
                                    detail=f"{where.detail}; inventory updated")
        inventory.release_capacity(self.db, inp.task_id)
        inventory.set_vm_state(self.db, inp.name, state)
        return MoveConfirmation(name=inp.name, host=where.host, state=state, moved=False,
                                detail=f"{where.detail}; {inp.destination.name} released")

    @activity.defn
    def locate_domain(self, inp: LocateDomainInput) -> DomainWhereabouts:
        """Which of ``inp.hosts`` has the domain (running first, else defined).

        With ``recover_on``: a domain left saved there by a cold move cut short is restored, and
        stale inactive copies on the other hosts are undefined, so it runs exactly once.
        """
        try:
            return self._locate(inp)
        except libvirt.libvirtError as err:  # a call on a domain object, outside hv.call
            first = inp.hosts[0]
            raise self.hv.translate(err, op="locate", uri=first.uri, host=first.name,
                                    vm=inp.name) from err

    def _locate(self, inp: LocateDomainInput) -> DomainWhereabouts:
        found: dict[str, libvirt.virDomain] = {}
        for host in inp.hosts:
            with self.hv.call("locate", host.uri, host.name, inp.name) as conn:
                dom = lookup(conn, inp.name)
                if dom is not None:
                    found[host.name] = dom
        active = [h for h, d in found.items() if d.isActive()]
        if inp.recover_on and inp.recover_on in found and not active:
            self._resume_saved(inp, found[inp.recover_on])
            active = [inp.recover_on]
        if inp.recover_on and active == [inp.recover_on]:
            uuid = found[inp.recover_on].UUIDString()
            for name, dom in list(found.items()):
                if name != inp.recover_on and not dom.isActive() and dom.UUIDString() == uuid:
                    self._undefine_stale(inp, name, dom)
                    del found[name]
        where = active[0] if active else next(iter(found), None)
        if where is None:
            return DomainWhereabouts(name=inp.name, host=None, detail="on none of "
                                     + ", ".join(h.name for h in inp.hosts))
        state = power_state(found[where])
        others = sorted(h for h in found if h != where)
        detail = f"{state} on {where}" + (f" (also defined on {', '.join(others)})"
                                          if others else "")
        return DomainWhereabouts(name=inp.name, host=where, state=state, also_defined_on=others,
                                 detail=detail)

    def _resume_saved(self, inp: LocateDomainInput, dom: libvirt.virDomain) -> None:
        host = next(h for h in inp.hosts if h.name == inp.recover_on)
        save = save_file(inp.save_dir or str(self.settings.migration_save_dir), dom.UUIDString())
        if save.exists():
            with self.hv.call("resume saved", host.uri, host.name, inp.name) as conn:
                conn.restore(str(save))
            save.unlink(missing_ok=True)
            get_logger(vm=inp.name, host=host.name).info("restored from an interrupted move")

    def _undefine_stale(self, inp: LocateDomainInput, name: str, dom: libvirt.virDomain) -> None:
        host = next(h for h in inp.hosts if h.name == name)
        with self.hv.call("undefine stale copy", host.uri, host.name, inp.name):
            dom.undefine()
        get_logger(vm=inp.name, host=name).info("stale copy from an interrupted move undefined")

    @activity.defn
    def list_host_domains(self, host: HostRef) -> HostDomains:
        """Every domain libvirt has on ``host`` (running or defined), by name."""
        with self.hv.call("list domains of", host.uri, host.name) as conn:
            domains = []
            for dom in conn.listAllDomains():
                uuid, vcpus, memory = shape_of(dom.XMLDesc())
                domains.append(HostDomain(name=dom.name(), uuid=uuid, state=power_state(dom),
                                          vcpus=vcpus, memory_mib=memory))
        return HostDomains(host=host.name, domains=sorted(domains, key=lambda d: d.name))

def save_file(directory: str, uuid: str) -> Path:
    return Path(directory) / f"{uuid}.save"


def migration_flags(inp: MigrateDomainInput, live: bool) -> tuple[int, dict[str, Any]]:
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


def _job_running(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:  # gone from the source: the migration finished
        return False


def _job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    try:
        return dict(dom.jobStats())
    except libvirt.libvirtError:
        return {}


def _percent(stats: dict[str, Any], before: float) -> float:
    total = stats.get("memory_total") or stats.get("data_total") or 0
    remaining = stats.get("memory_remaining", stats.get("data_remaining", 0))
    if not total:
        return before
    return float(max(before, min(99.0, 100.0 * (1 - remaining / total))))
