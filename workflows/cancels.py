"""A cancel never cuts a step in half: what a cancelled task awaits is awaited to its end.

Temporal delivers a task's cancel as ``asyncio.CancelledError`` at whatever the task awaits. An
activity that was running goes on until it hears of the cancel (at its next heartbeat) and ends;
a child task undoes its own work and ends. A task must not compensate before then: its undos decide
from what the hypervisors say, and a step still running would change that under them. ``settle``
waits for the end, passing the cancel on once, and says whether a cancel arrived; the caller then
records what the step did and raises the cancel (``asyncio.CancelledError``), so the task
compensates and ends ``cancelled``.

Histories recorded before this rule replay without it: every task asks ``workflow.patched
(CANCEL_PATCH)`` once, when it starts (``Runbook.perform``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from taskomatic.errors import error_info
    from taskomatic.models import StepRecord, StepState

T = TypeVar("T")

# Tasks started with this patch await what a cancel interrupts (activities, children, their
# places in line) to its end, and treat a cancel met anywhere (a wait for prerequisites, for
# their place in line, for tasks placed on a host) as the task's cancel.
CANCEL_PATCH = "cancel-to-the-end"

# Heartbeat timeout of the long hypervisor steps (migrate, wait for shutoff) under CANCEL_PATCH.
# An activity hears of a cancel only in the answer to a heartbeat, and the SDK sends heartbeats
# at most every 80 % of this timeout (or the worker's shorter throttle): a cancel reaches the
# activity within 4 s.
CANCEL_HEARTBEAT = timedelta(seconds=5)


async def settle(fut: asyncio.Future[Any], on_cancel: Callable[[], object]) -> bool:
    """Wait until ``fut`` (an activity's or a child's handle, a starting child) is done, however
    often the awaiting task is cancelled meanwhile. The first cancel calls ``on_cancel`` (for a
    handle, ``handle.cancel``: the activity or child is told and its end still awaited). Returns
    True if a cancel arrived; ``fut`` keeps the outcome (result or error)."""
    cancelled = False
    while not fut.done():
        try:
            await workflow.wait([fut])
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:  # this cancel is handled here; later awaits must not re-raise it
                task.uncancel()
            if not cancelled:
                cancelled = True
                on_cancel()
    return cancelled


async def together(aws: Iterable[Awaitable[T]], cancel_safe: bool) -> list[T]:
    """Await ``aws`` (steps, children) at once; their results in order, or the first error.

    With ``cancel_safe`` a cancel reaches each of them and is raised here only once every one
    has ended (``asyncio.gather`` stops waiting at the first one that ends cancelled, and the
    task would compensate beside the others); without, ``asyncio.gather`` as before."""
    if not cancel_safe:
        return list(await asyncio.gather(*aws))
    tasks = [asyncio.ensure_future(a) for a in aws]
    everything = asyncio.gather(*tasks, return_exceptions=True)
    cancelled = await settle(everything, everything.cancel)
    if not everything.cancelled():
        everything.exception()  # seen; each outcome is read from its task below
    if cancelled:
        raise asyncio.CancelledError()
    return [t.result() for t in tasks]


class Interrupted(Exception):
    """A cancel arrived while a step's activity ran; the activity has ended with ``outcome``
    (its result, or the error it raised: ``ActivityError``). Raised by the runbook's activity
    runner, turned by ``Runbook.step`` into the task's cancel."""

    def __init__(self, outcome: asyncio.Future[Any]) -> None:
        super().__init__("cancelled while the step ran")
        self.outcome = outcome

    def record(self, step: StepRecord) -> None:
        """Show on ``step`` how it ended: done (what it did stands; its undo decides about
        it), or failed — cancelled, or with its own error."""
        step.finished_at = workflow.now()
        err = None if self.outcome.cancelled() else self.outcome.exception()
        if err is None and not self.outcome.cancelled():
            step.state = StepState.DONE
            step.detail = getattr(self.outcome.result(), "detail", None)
        elif err is None or is_cancelled_exception(err):
            step.state, step.detail = StepState.FAILED, "cancelled"
        else:
            cause = err.cause if isinstance(err, ActivityError) else err
            step.state = StepState.FAILED
            step.detail = f"cancelled; {error_info(cause or err).message}"
