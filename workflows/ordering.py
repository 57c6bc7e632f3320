"""Tasks in the correct order: prerequisites first, then a place in line for each resource.

A task with ``after=[ids]`` waits until every one of those tasks has ended, and fails (doing
nothing) unless all of them completed. Then it claims the resources its request names; tasks that
share a resource run one at a time, in the order they joined the line. Waiting costs nothing: the
task sleeps until the task ahead of it releases (a ``wake`` signal) or ends in any other way,
terminated included (a watcher activity sees that).

Everything a task shows about its place (state, what it waits on) goes to its search attributes
and memo, so the queue view and the Temporal Web UI show it without asking each task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.ordering import WAKE_SIGNAL, OrderingActivities
    from taskomatic.errors import ErrorInfo, ErrorType
    from taskomatic.models import (
        AwaitTaskInput,
        ClaimInput,
        ClaimResult,
        ReleaseClaimsResult,
        ReleaseInput,
        TaskOutcome,
        TaskState,
    )
    from taskomatic.temporal import TASK_STATE

from workflows.cancels import settle

Ordering = OrderingActivities

# Claims are one short transaction each, retried while the database is unreachable. They are
# ordinary activities, not local ones: a local activity runs inside a workflow task, and when the
# server rejects that task (a new event arrived meanwhile) the workflow replays while the
# activity's effect stays; a claim taken and released by a discarded run would lose the task its
# place in line. The timeout is short so that a claim lost with its worker is retried soon.
_CLAIM_TIMEOUT = timedelta(seconds=10)
_CLAIM_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=10))
# Waiting for another task can take as long as that task does; the heartbeat (sent every 5 s)
# notices a lost worker.
_WATCH_TIMEOUT = timedelta(days=365)
_WATCH_HEARTBEAT = timedelta(seconds=15)
_WATCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                           maximum_interval=timedelta(seconds=30))


# Tasks started with this patch release their claims in the transaction of their last inventory
# step when they have one (``InLine.releasing``): one activity, one commit and the ordering
# queue's round trip fewer per task. Histories recorded before it replay with the release step.
RELEASE_WITH_LAST_STEP = "i16-release-with-last-step"

# Tasks started with this patch record one patch marker (and one ``TemporalChangeVersion``
# upsert, a visibility write on the server) instead of one for each of the patches released
# before it, which it stands for (``InLine.patched``): every task started since takes their new
# paths. Histories recorded before it replay with their own markers.
ONE_PATCH = "i16-one-patch"
# The patches ``ONE_PATCH`` stands for: "ordering-1" (``workflows.runbook.ORDERING_PATCH``),
# "cancel-to-the-end" (``workflows.cancels.CANCEL_PATCH``), "vm-disks"
# (``workflows.disks.DISKS_PATCH``) and ``RELEASE_WITH_LAST_STEP``
# (tests/test_ordering_patches.py holds the names equal).
COVERED_BY_ONE_PATCH = frozenset({"ordering-1", "cancel-to-the-end", "vm-disks",
                                  RELEASE_WITH_LAST_STEP})

# Memo key set by the starter when it could grant a task's resources at submission.
GRANTED_AT_SUBMIT = "granted_at_submit"


def ordering_queue(task_queue: str) -> str:
    """The task queue of the ordering activities for a worker serving ``task_queue``."""
    return f"{task_queue}-ordering"


def _consume(fut: asyncio.Future[Any]) -> None:
    """Collect the outcome of a wait given up on (its cancellation), so none goes unseen."""
    if not fut.cancelled():
        fut.exception()


class InLine:
    """Mixin of the Runbook: waiting for prerequisites and resources, and telling about it."""

    def __init__(self) -> None:
        # Set by the ``wake`` signal: the task ahead released; try to claim again.
        self._woken = False
        # Whether this run may hold claims (it asked, or the starter granted them at submission).
        self._claimed = False
        # What the task has published: memo entries and the state search attribute.
        self._memo: dict[str, Any] = {}
        self._shown_state: TaskState | None = None
        # Set by the runbook when the task starts: whether this run awaits what a cancel
        # interrupts to its end (``workflows.cancels.CANCEL_PATCH``).
        self.cancel_safe = False
        # Whether the starter granted the task's resources when it submitted it.
        self.granted_at_submit = False
        # Whether this run was started with ``ONE_PATCH`` (set by the runbook when it starts).
        self.one_patch = False
        # A cancel that arrived while the task released resources (a release always finishes):
        # the runbook honours it at the next step.
        self.cancel_pending = False

    def patched(self, patch_id: str) -> bool:
        """``workflow.patched(patch_id)``, except that a run started with ``ONE_PATCH`` takes
        the new path of every patch in ``COVERED_BY_ONE_PATCH`` without recording its marker."""
        return (self.one_patch and patch_id in COVERED_BY_ONE_PATCH) or workflow.patched(patch_id)

    @workflow.signal(name=WAKE_SIGNAL)
    def wake(self) -> None:
        self._woken = True

    def show_state(self, state: TaskState, **memo: Any) -> None:
        """Publish the task's state (search attribute) and details (memo) when they change."""
        memo = {key: value for key, value in memo.items() if self._memo.get(key) != value}
        if memo:
            self._memo = {**self._memo, **memo}
            workflow.upsert_memo(memo)
        if self._shown_state != state:
            self._shown_state = state
            workflow.upsert_search_attributes([TASK_STATE.value_set(state)])

    def assume_shown(self, **memo: Any) -> None:
        """Take ``memo`` as published without writing it: what a reader assumes of a memo that
        lacks those keys (``starter.tasks.status_of``)."""
        self._memo = {**self._memo, **memo}

    def shown(self, key: str) -> bool:
        """Whether the task's memo already holds ``key``."""
        return key in self._memo

    async def await_tasks(self, task_ids: list[str]) -> list[TaskOutcome]:
        """Wait until every one of ``task_ids`` has ended; how each ended."""
        outcomes = await asyncio.gather(*(self._watch(t) for t in task_ids))
        return list(outcomes)

    def _watch(self, task_id: str) -> Any:
        return workflow.start_activity_method(
            Ordering.await_task_end, AwaitTaskInput(task_id=task_id),
            task_queue=ordering_queue(workflow.info().task_queue),
            start_to_close_timeout=_WATCH_TIMEOUT, heartbeat_timeout=_WATCH_HEARTBEAT,
            retry_policy=_WATCH_RETRY)

    @staticmethod
    def prerequisite_failure(outcomes: list[TaskOutcome]) -> ErrorInfo | None:
        failed = [o for o in outcomes if o.status != "completed"]
        if not failed:
            return None
        text = "; ".join(f"prerequisite task {o.task_id} ended {o.status}"
                         + (f" ({o.message})" if o.message else "") for o in failed)
        return ErrorInfo(type=ErrorType.PREREQUISITE_FAILED, message=text, field="after")

    async def claim(self, kind: str, resources: list[str],
                    on_wait: Callable[[ClaimResult], None] | None = None) -> ClaimResult:
        """Take ``resources`` when the task's turn comes; until then sleep. ``on_wait`` is
        called with each new reason for waiting."""
        task_id = workflow.info().workflow_id
        if not self._claimed and workflow.memo_value(GRANTED_AT_SUBMIT, False, type_hint=bool):
            # The starter found the resources free and took them in the transaction that put
            # the task in line: nothing to wait for, no round trip to make.
            self._claimed = self.granted_at_submit = True
            if self.one_patch and workflow.info().typed_search_attributes.get(
                    TASK_STATE) == "running":
                self._shown_state = "running"  # the starter published it: no upsert
            return ClaimResult(granted=True)
        closed: list[str] = []
        while True:
            self._woken = False
            self._claimed = True
            result = await self._claim(ClaimInput(task_id=task_id, kind=kind,
                                                  resources=resources, closed=closed))
            if result.granted:
                return result
            if on_wait is not None:
                on_wait(result)
            closed = await self._sleep_until_moved(result)

    async def _claim(self, inp: ClaimInput) -> ClaimResult:
        """One try at taking the resources (a place in line at the first). A cancel meanwhile
        lets the claim finish (its rows stay consistent and the task's release drops them), then
        raises ``asyncio.CancelledError``; tasks started before CANCEL_PATCH keep try-cancel."""
        queue = ordering_queue(workflow.info().task_queue)
        if not self.cancel_safe:
            result: ClaimResult = await workflow.execute_activity_method(
                Ordering.claim_resources, inp, task_queue=queue,
                start_to_close_timeout=_CLAIM_TIMEOUT, retry_policy=_CLAIM_RETRY)
            return result
        handle = workflow.start_activity_method(
            Ordering.claim_resources, inp, task_queue=queue,
            start_to_close_timeout=_CLAIM_TIMEOUT, retry_policy=_CLAIM_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)
        if await settle(handle, handle.cancel):
            raise asyncio.CancelledError()
        return handle.result()

    async def _sleep_until_moved(self, waiting: ClaimResult) -> list[str]:
        """Sleep until woken or until the task we queue behind ends; returns the tasks seen
        ended (their claims are dropped on the next try)."""
        target = waiting.watch_target()
        watcher = self._watch(target) if target else None
        woken = asyncio.ensure_future(workflow.wait_condition(lambda: self._woken))
        pending = [woken] + ([watcher] if watcher is not None else [])
        try:
            done, _ = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in pending:
                if not fut.done():
                    fut.add_done_callback(_consume)
                    fut.cancel()
        if watcher is not None and watcher in done and not watcher.cancelled():
            outcome: TaskOutcome = watcher.result()
            return [outcome.task_id]
        return []

    def releasing(self) -> str | None:
        """For the input (``release_task``) of the task's last step, an inventory step: this
        task's id when that step is to release all its claims in its own transaction; None when
        the task holds none, or for a run from before ``RELEASE_WITH_LAST_STEP`` (it releases
        them in a step of its own at its end, ``release``)."""
        if not self._claimed or not self.patched(RELEASE_WITH_LAST_STEP):
            return None
        return workflow.info().workflow_id

    async def released(self, woken: list[str]) -> None:
        """The last step released every claim of the task (``releasing``): nothing is left for
        ``release``. Wake ``woken``, the tasks waiting for what it released, if any (a signal
        from the workflow; one that has ended meanwhile needs none, and its error is dropped).
        A cancel meanwhile is too late, as for a release."""
        self._claimed = False
        if not woken:
            return
        signals = asyncio.gather(*(workflow.get_external_workflow_handle(t).signal(WAKE_SIGNAL)
                                   for t in woken), return_exceptions=True)
        if await settle(signals, lambda: None):
            self.cancel_pending = True

    async def release(self, resources: list[str] | None = None) -> ReleaseClaimsResult | None:
        """Give up claimed resources (all of them by default) and wake whoever is next."""
        if not self._claimed:
            return None
        inp = ReleaseInput(task_id=workflow.info().workflow_id, resources=resources)
        queue = ordering_queue(workflow.info().task_queue)
        if not self.cancel_safe:
            result: ReleaseClaimsResult = await workflow.execute_activity_method(
                Ordering.release_resources, inp, task_queue=queue,
                start_to_close_timeout=_CLAIM_TIMEOUT, retry_policy=_CLAIM_RETRY)
        else:  # a release is never cut short; a cancel meanwhile waits for the next step
            handle = workflow.start_activity_method(
                Ordering.release_resources, inp, task_queue=queue,
                start_to_close_timeout=_CLAIM_TIMEOUT, retry_policy=_CLAIM_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED)
            if await settle(handle, lambda: None):
                self.cancel_pending = True
            result = handle.result()
        if resources is None:
            self._claimed = False
        return result
