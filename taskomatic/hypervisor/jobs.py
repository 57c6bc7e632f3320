"""A migration job, as libvirt shows it: how one is asked for (``migrateToURI3`` flags and
parameters), how far it got (``jobStats()`` → percent), whether one runs, and — once it has
ended — what it did (``job_outcome``: moved, or why not). Pure functions over libvirt domain
objects and stats dicts, and two helpers for the call that runs a job in a thread (its error;
awaiting it to its end). ``taskomatic.hypervisor.migration`` runs and watches the jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from taskomatic.models import MigrateDomainInput

T = TypeVar("T")

WATCH_SECONDS = 1.0  # how often a migration job is looked at and reported (watched or aborted)


def migration_flags(inp: MigrateDomainInput, live: bool) -> tuple[int, dict[str, Any]]:
    """The ``migrateToURI3`` flags and typed parameters of a migration.

    Always peer-to-peer, persisted on the destination and undefined on the source; live for a
    running domain (with the bandwidth cap in MiB/s and the destination's migration URI, when
    set), offline for a shut-off one; unsafe only when the limits ask for it or a disk is on a
    shared ``dir`` pool (``MoveStorage.unsafe``); with a storage copy (``MoveStorage.copies``)
    ``VIR_MIGRATE_NON_SHARED_DISK`` over the copied disks only (``MIGRATE_DISKS``; the caller
    adds ``DEST_XML`` naming the destination's volumes).
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
    if inp.limits.unsafe or inp.storage.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if inp.storage.copies:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [c.target for c in inp.storage.copies]
    return flags, params


def job_running(dom: libvirt.virDomain) -> bool:
    """Whether ``dom`` has a job (a migration) running; a domain gone from the source has none."""
    try:
        return bool(dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError:  # gone from the source: the migration finished
        return False


def job_stats(dom: libvirt.virDomain, flags: int = 0) -> dict[str, Any]:
    """``dom.jobStats(flags)`` as a dict (byte counts such as ``data_processed``; with
    ``VIR_DOMAIN_JOB_STATS_COMPLETED`` the last ended job's ``type`` and, if libvirt kept it, its
    ``errmsg``), or {} if none."""
    try:
        return dict(dom.jobStats(flags))
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


@dataclass(frozen=True)
class JobOutcome:
    """What an ended migration job did, as the hypervisors show it: ``moved`` (the domain is on
    the destination), else ``why`` not, in words."""

    moved: bool
    why: str


_ENDED = {
    libvirt.VIR_DOMAIN_JOB_CANCELLED: "the migration job was cancelled",
    libvirt.VIR_DOMAIN_JOB_FAILED: "the migration job failed",
}


def job_outcome(on_source: bool | None, on_destination: bool | None, completed: dict[str, Any],
                error: str | None = None) -> JobOutcome:
    """Judge a migration job that has ended by where its domain is.

    ``on_source``/``on_destination``: None where that host has no such domain, else whether it
    runs there. ``completed``: the source's ``jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)`` ({} when
    the source has no domain). ``error``: the job's own error, when the call that ran it was
    seen to fail. The rule: defined on the destination and not left running on the source (gone
    from it, or shut off there while the destination runs it) is a move; anything else is not,
    and ``why`` is the job's error, else libvirt's ``errmsg`` of the ended job, else its type.
    """
    if on_destination is not None and (on_source is None or (on_destination and not on_source)):
        return JobOutcome(True, "on the destination")
    if on_source is None:
        return JobOutcome(False, "on neither host")
    if on_source and on_destination:
        return JobOutcome(False, "running on both hosts")
    why = (error or completed.get(libvirt.VIR_DOMAIN_JOB_ERRMSG)
           or _ENDED.get(completed.get("type", libvirt.VIR_DOMAIN_JOB_NONE))
           or "the migration job ended")
    return JobOutcome(False, f"{why}; still on the source")


def call_error(job: asyncio.Future[None] | None) -> libvirt.libvirtError | None:
    """The libvirt error the migration call ``job`` (a future) ended with, if it has ended so."""
    if job is None or not job.done() or job.cancelled():
        return None
    err = job.exception()
    return err if isinstance(err, libvirt.libvirtError) else None


async def to_its_end(work: Awaitable[T]) -> T:
    """Await ``work`` (a blocking call in a thread, which no cancel stops). Cancelled meanwhile,
    wait for it to end anyway: then its result if it succeeded (what it did is done), else the
    cancellation."""
    run = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        await asyncio.wait([run])
        if run.cancelled() or run.exception() is not None:
            raise
        return run.result()
