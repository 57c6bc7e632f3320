"""Heartbeats for steps that do not send their own, so a worker that dies is noticed quickly.

Temporal retries a step whose worker died only once the step times out: without a heartbeat
timeout that is its whole start-to-close timeout (120 s for a hypervisor step), with one it is
the heartbeat timeout (``workflows.runbook`` gives database and hypervisor steps one). This
interceptor heartbeats such a step every third of its heartbeat timeout while it runs.

A heartbeat's answer is also how a cancel of the task reaches a step. A step that did not
heartbeat never heard one and ran to its end, and the task (which waits for the step's end
before its undo, ``ActivityCancellationType.WAIT_CANCELLATION_COMPLETED``) used the step's
outcome. These heartbeats keep that: the cancel is held back (a synchronous step runs inside
``activity.shield_thread_cancel_exception``; an asynchronous one is awaited to its end), and
the step's own result or error is what the task sees. A worker that stops still cancels an
asynchronous step at once, as before. Steps that heartbeat on their own (``own_heartbeats``)
hear cancels and handle them themselves; this interceptor leaves them alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import temporalio.exceptions
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

F = TypeVar("F", bound=Callable[..., Any])
_OWN = "__taskomatic_own_heartbeats__"


def own_heartbeats(fn: F) -> F:
    """Mark an activity that heartbeats (and so hears cancels) on its own."""
    setattr(fn, _OWN, True)
    return fn


class StepHeartbeats(Interceptor):
    """Heartbeats steps with a heartbeat timeout that do not send their own (module doc)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Heartbeated(next)


class _Heartbeated(ActivityInboundInterceptor):
    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = outbound
        super().init(outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if timeout is None or getattr(input.fn, _OWN, False):
            return await self.next.execute_activity(input)
        beats = asyncio.ensure_future(self._beat(timeout.total_seconds() / 3))
        try:
            if input.executor is not None:  # synchronous: runs in a thread
                return await self.next.execute_activity(
                    dataclasses.replace(input, fn=_cancel_held_back(input.fn)))
            return await _to_its_end(self.next.execute_activity(input))
        finally:
            beats.cancel()

    async def _beat(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._outbound.heartbeat()


def _cancel_held_back(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run to its end whatever cancel arrives meanwhile: its own result or error."""

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        outcome: tuple[bool, Any] = (False, None)
        try:
            with activity.shield_thread_cancel_exception():
                try:
                    outcome = (True, fn(*args))
                except BaseException as err:  # its own error, raised below
                    outcome = (False, err)
        except temporalio.exceptions.CancelledError:
            pass  # the cancel that arrived meanwhile: the task waits for this outcome
        done, value = outcome
        if not done:
            raise value
        return value

    return run


async def _to_its_end(step: Any) -> Any:
    """Await the step; a cancel waits for its end (and is lost) unless the worker stops."""
    run = asyncio.ensure_future(step)
    while True:
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.worker_shutdown:
                run.cancel()
                raise
