"""The worker of the fault runs (``bench.faults``): ``build_worker``'s, with ``migrate_domain``
slowed so that faults have phases to aim at, and replaceable in-process as a worker process is
replaced (stopped, then a new one started).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from taskomatic.hypervisor import Hypervisors
from taskomatic.models import MigrateDomainInput, MigrationReport
from taskomatic.settings import Settings
from worker import build_worker

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class InFlight:
    """A migration in flight: its phase (``before-move`` / ``after-move``) and its hosts."""

    phase: str
    source: str
    destination: str


# VM → its migration in flight, kept by the slowed migrate activity on the rig's event loop.
Phases = dict[str, InFlight]


def slowed_migrate(real: Callable[[MigrateDomainInput], Awaitable[MigrationReport]],
                   seconds: float, phases: Phases
                   ) -> Callable[[MigrateDomainInput], Awaitable[MigrationReport]]:
    """The ``migrate_domain`` activity ``real``, made to take ``seconds`` with the move itself
    half-way, heartbeating meanwhile (so a cancel or a worker shutdown reaches it before the move
    or after its effect, as one reaches a real migration job); ``phases`` follows it."""

    async def beat(duration: float) -> None:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            activity.heartbeat()
            await asyncio.sleep(POLL_SECONDS)

    @activity.defn(name="migrate_domain")
    async def migrate_domain(inp: MigrateDomainInput) -> MigrationReport:
        hosts = inp.source.name, inp.destination.name
        phases[inp.name] = InFlight("before-move", *hosts)
        try:
            await beat(seconds / 2)
            report = await real(inp)
            phases[inp.name] = InFlight("after-move", *hosts)
            await beat(seconds / 2)
            return report
        finally:
            phases.pop(inp.name, None)

    return migrate_domain


class RunWorker(Protocol):
    """The worker of the runs, as a run may disturb it: ``prepare`` once, then ``start``,
    ``stop`` (as on SIGTERM; returns how many workflow coroutines of the stopped worker made
    workflow calls while collected) and ``kill`` (as SIGKILL) as often as the runs need."""

    async def prepare(self) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> int: ...

    async def kill(self) -> None: ...


class ReplaceableWorker:
    """``build_worker``'s worker for ``settings`` (its options, shutdown behaviour included),
    with ``migrate_domain`` slowed by ``slowed_migrate`` to ``move_seconds`` (``phases`` follows
    the migrations); ``start`` and ``stop`` as often as a run needs. Call ``prepare`` first."""

    def __init__(self, temporal: Client, settings: Settings, hv: Hypervisors,
                 executor: ThreadPoolExecutor, move_seconds: float, phases: Phases) -> None:
        self.temporal, self.settings, self.hv, self.executor = temporal, settings, hv, executor
        self.move_seconds, self.phases = move_seconds, phases
        self._config: dict[str, Any] = {}
        self._worker: Worker | None = None
        self._running: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        template = build_worker(self.temporal, self.settings, self.hv, self.executor)
        self._config = dict(template.config())
        async with template:  # the SDK lets one worker per queue be registered at a time
            pass
        acts = list(self._config["activities"])
        real = next(a for a in acts if _activity_name(a) == "migrate_domain")
        self._config["activities"] = [a for a in acts if a is not real] + [
            slowed_migrate(real, self.move_seconds, self.phases)]

    async def start(self) -> None:
        self._worker = Worker(**self._config)
        self._running = asyncio.ensure_future(self._worker.run())
        await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """An in-process worker cannot be killed as a process is (``bench.fault_process``'s
        ``WorkerProcess`` can)."""
        raise NotImplementedError("kill-worker needs a worker process (WorkerProcess)")

    async def stop(self) -> int:
        """Shut the worker down, as at the end of a worker process: its workflow runs still in
        its cache are dropped and collected at once, with no workflow running. (The SDK does
        not evict them at shutdown but leaves them to the garbage collector, which closes their
        coroutines wherever it runs: a ``finally`` in one of them then issues its commands into
        whichever workflow runs at that moment, temporalio/sdk-python#494. A worker process
        exits instead; this rig replaces its worker in-process.) Returns how many of their
        coroutines tried a workflow call while being closed."""
        if self._worker is None:
            return 0
        await self._worker.shutdown()
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
        gone = weakref.ref(self._worker)
        self._worker = self._running = None
        closed = _collect_outside_workflows()
        for _ in range(50):  # its last internal tasks may still be finishing
            if gone() is None:
                return closed
            await asyncio.sleep(0.1)
            closed += _collect_outside_workflows()
        raise RuntimeError("the stopped worker is still referenced: its cached workflow runs "
                           "would be collected later, inside other workflows")


def _collect_outside_workflows() -> int:
    """Run the garbage collector; returns how many coroutines it closed that tried a workflow
    call meanwhile (raising ``_NotInWorkflowEventLoopError``: no workflow runs here), which are
    not reported as unraisable exceptions. Others are, as usual."""
    closed = 0
    usual = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        nonlocal closed
        if type(unraisable.exc_value).__name__ == "_NotInWorkflowEventLoopError":
            closed += 1
        else:
            usual(unraisable)

    sys.unraisablehook = hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = usual
    return closed


def _activity_name(fn: Any) -> str:
    defn = getattr(fn, "__temporal_activity_definition", None)
    return str(getattr(defn, "name", ""))
