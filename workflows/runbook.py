"""The shape every task shares: named steps, compensation next to its step, progress and errors.

A task reads like an operator's runbook::

    res = await self.step("reserve capacity", Inventory.reserve_capacity, ...,
                          undo=Undo("release capacity", Inventory.release_capacity, ...))

Each step is recorded (name, state, times, what it found) for the ``progress`` query. An undo is
registered *before* its step runs, because a step that timed out may still have happened; undos
are idempotent, so running one for a step that did nothing is harmless. If any step fails or the
task is cancelled, the undos run newest first and the task fails with a ``TaskFailure``. Undos
that belong to no single step go through the task's ``undo`` stack (``add``, ``drop``,
``during``); nothing else touches it.

A task moves through the phases of ``Phase``: it plans, runs and finalizes (the task says when),
then the runbook ends it in ``done``, or in ``compensate`` and then ``failed``.

A cancel of the task is met wherever the task is: in a step, whose activity is awaited to its
real end first (``workflows.cancels``), or in a wait for prerequisites, a place in line or other
tasks. Either way the undos run once nothing the task started still runs, what it held is
released, and it ends ``cancelled``.

Behaviours only some tasks need are helper objects they create in ``__init__`` (the VM steps, the
disk steps, moving a VM), not base classes every task inherits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from taskomatic.errors import ErrorInfo, error_info
    from taskomatic.logs import get_logger
    from taskomatic.models import (
        ClaimResult,
        Phase,
        StepRecord,
        StepState,
        TaskFailure,
        TaskProgress,
        TaskRequest,
        TaskState,
    )
    from taskomatic.states import check_task_transition
    from taskomatic.temporal import TASK_HOST

from workflows.cancels import CANCEL_PATCH, Interrupted, settle, together
from workflows.ordering import ONE_PATCH, InLine, ordering_queue

# Histories recorded before tasks waited for prerequisites and resources replay without it.
ORDERING_PATCH = "ordering-1"

T = TypeVar("T")


@dataclass(frozen=True)
class ActivityOptions:
    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None
    # Activities about the queue itself run on the ordering queue (see worker.py).
    ordering_queue: bool = False
    # A cancel of the task reaches the activity (at its next heartbeat) and is awaited until it
    # has ended, so no undo runs beside it (CANCEL_PATCH; before it, the SDK's try-cancel).
    cancellation: ActivityCancellationType = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


# A step whose worker died is retried after this long (the worker heartbeats every step that
# has it: activities.heartbeats), not after its whole start-to-close timeout.
STEP_HEARTBEAT = timedelta(seconds=10)
# Database steps are short; a lost connection is retried briefly, anything else is final.
DATABASE = ActivityOptions(
    start_to_close=timedelta(seconds=30),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                      maximum_interval=timedelta(seconds=5), maximum_attempts=8),
    heartbeat=STEP_HEARTBEAT,
)
# Hypervisor steps: an unreachable host is retried for ~15 s (6 attempts) before the task gives
# up and compensates; long enough to ride out a libvirtd restart.
HYPERVISOR = ActivityOptions(
    start_to_close=timedelta(seconds=120),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=500), backoff_coefficient=2.0,
                      maximum_interval=timedelta(seconds=10), maximum_attempts=6),
    heartbeat=STEP_HEARTBEAT,
)


@dataclass(frozen=True)
class Undo:
    """A compensating step: ``activity(arg)`` with ``options``, shown as ``name``."""

    name: str
    activity: Callable[..., Any]
    arg: Any
    options: ActivityOptions = HYPERVISOR


class UndoStack:
    """The undos a task has registered, run newest first if the task fails or is cancelled.

    ``Runbook.step(..., undo=...)`` adds a step's undo before the step runs; ``add``, ``drop`` and
    ``during`` register undos that outlive or fall short of a single step. Only the runbook takes
    undos off to run them (``pop_newest``).
    """

    def __init__(self) -> None:
        self._undos: list[Undo] = []

    def add(self, undo: Undo) -> None:
        """Register ``undo``; it runs before every undo registered earlier."""
        self._undos.append(undo)

    def drop(self, undo: Undo) -> None:
        """Unregister ``undo`` (this very object, its newest registration): what it would undo
        is settled. Raises ``ValueError`` if it is not registered."""
        for index in range(len(self._undos) - 1, -1, -1):
            if self._undos[index] is undo:
                del self._undos[index]
                return
        raise ValueError(f"undo {undo.name!r} is not registered")

    @contextmanager
    def during(self, undo: Undo) -> Iterator[None]:
        """Register ``undo`` for the block: dropped when the block ends normally (``return``,
        ``continue`` or its end), kept when an exception leaves it, so the task's compensation
        runs it."""
        self.add(undo)
        yield
        self.drop(undo)

    def pop_newest(self) -> Undo | None:
        """Take off the newest undo to run it; None when none is left."""
        return self._undos.pop() if self._undos else None


class TaskFailed(Exception):
    """Raised inside a workflow to end the task with a classified error."""

    def __init__(self, info: ErrorInfo, step: str) -> None:
        super().__init__(info.message)
        self.info = info
        self.step = step


def workflow_type(run: Callable[..., Awaitable[Any]]) -> str:
    """The workflow type (the task kind) a ``@workflow.run`` method starts, e.g. ``"MigrateVm"``
    for ``MigrateVm.run``: its class's name, which every task's ``@workflow.defn(name=...)``
    repeats (``tests/test_starter.py`` holds the two equal for every kind)."""
    return run.__qualname__.partition(".")[0]


class Runbook(InLine):
    """Base class of every task workflow; a task's kind is its workflow type name."""

    def __init__(self) -> None:
        super().__init__()
        self.undo = UndoStack()
        self._ordered = False
        info = workflow.info()
        self._state = TaskProgress(task_id=info.workflow_id, kind=info.workflow_type,
                                   phase="plan")

    # --- what operators see ----------------------------------------------------------------

    @workflow.query
    def progress(self) -> TaskProgress:
        return self._state

    @property
    def kind(self) -> str:
        """The task's kind: its workflow type name (``CreateVm``, ``ClearHost``, ...)."""
        return self._state.kind

    def about(self, *, vm: str | None = None, host: str | None = None) -> None:
        """Name the VM and host this task is about (progress, logs)."""
        if vm is not None:
            self._state.vm = vm
        if host is not None:
            self._state.host = host

    def on_host(self, host: str) -> None:
        """Name the host this task works on: progress, logs and its ``TaskomaticHost`` search
        attribute (one command)."""
        self.about(host=host)
        workflow.upsert_search_attributes([TASK_HOST.value_set(host)])

    def phase(self, phase: Phase) -> None:
        """Enter ``phase``: a task says when it plans, runs and finalizes; the runbook itself
        enters ``compensate``, ``done`` and ``failed``."""
        self._state.phase = phase

    def set_percent(self, percent: float | None) -> None:
        """How far the task's long step is, 0-100 (None: not measured)."""
        self._state.percent = percent

    def log(self, event: str, **fields: Any) -> None:
        if not workflow.unsafe.is_replaying():
            get_logger(task_id=self._state.task_id, kind=self.kind, vm=self._state.vm,
                       host=self._state.host).info(event, **fields)

    # --- steps -----------------------------------------------------------------------------

    def begin(self, name: str, state: StepState = StepState.RUNNING) -> StepRecord:
        record = StepRecord(name=name, state=state, started_at=workflow.now())
        self._state.steps.append(record)
        self._state.current_step = name
        return record

    async def step(self, name: str, activity: Callable[..., Any], arg: Any, *,
                   options: ActivityOptions = HYPERVISOR, undo: Undo | None = None,
                   undo_once_done: Undo | None = None, last: bool = False) -> Any:
        """Run ``activity(arg)`` as the step ``name``, ``undo`` registered first; its result.
        ``undo_once_done`` is registered only once the step has done its work (also when a
        cancel came meanwhile): for an undo that is wrong unless the step happened.

        ``last``: the task's last step, an inventory step whose input has ``release_task``: it
        also releases the task's claims in its transaction (``InLine.releasing``); a cancel
        while it runs then comes too late, as for a release.

        Raises ``TaskFailed`` if the activity failed, ``asyncio.CancelledError`` if the task was
        cancelled meanwhile (once the activity has ended; the step shows what it did)."""
        if self.cancel_pending:  # a cancel met while releasing resources
            raise asyncio.CancelledError()
        releasing = self.releasing() if last else None
        if releasing is not None:
            arg = arg.model_copy(update={"release_task": releasing})
        if undo is not None:
            self.undo.add(undo)
        record = self.begin(name)
        self.log("step started", step=name)
        try:
            result = await self._run(activity, arg, options, shielded=releasing is not None)
        except Interrupted as cut:
            cut.record(record)
            self.log("step interrupted by a cancel", step=name, state=record.state,
                     detail=record.detail)
            if undo_once_done is not None and record.state == StepState.DONE:
                self.undo.add(undo_once_done)
            raise asyncio.CancelledError() from None
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                record.state, record.finished_at, record.detail = (
                    StepState.FAILED, workflow.now(), "cancelled")
                raise asyncio.CancelledError() from err
            info = error_info(err.cause or err)
            record.state, record.finished_at, record.detail = (StepState.FAILED, workflow.now(),
                                                               info.message)
            self.log("step failed", step=name, error=info.message, error_type=info.type)
            raise TaskFailed(info, name) from err
        record.state, record.finished_at = StepState.DONE, workflow.now()
        record.detail = getattr(result, "detail", None)
        self.log("step done", step=name, detail=record.detail)
        if undo_once_done is not None:
            self.undo.add(undo_once_done)
        if releasing is not None:
            await self.released(result.woken)
        return result

    async def together(self, aws: Iterable[Awaitable[T]]) -> list[T]:
        """Await ``aws`` (steps, children) at once: ``workflows.cancels.together``."""
        return await together(aws, self.cancel_safe)

    async def _run(self, activity: Callable[..., Any], arg: Any, options: ActivityOptions,
                   shielded: bool = False) -> Any:
        """The activity's result. Raises ``ActivityError``, or (with CANCEL_PATCH) ``Interrupted``
        once the activity has ended if the task was cancelled while it ran; ``shielded``: the
        activity is not told, and the cancel waits for the next step (``cancel_pending``)."""
        queue = ordering_queue(workflow.info().task_queue) if options.ordering_queue else None
        if not self.cancel_safe:
            return await workflow.execute_activity_method(
                activity, arg, start_to_close_timeout=options.start_to_close,
                retry_policy=options.retry, heartbeat_timeout=options.heartbeat,
                task_queue=queue,
            )
        handle = workflow.start_activity_method(
            activity, arg, start_to_close_timeout=options.start_to_close,
            retry_policy=options.retry, heartbeat_timeout=options.heartbeat, task_queue=queue,
            cancellation_type=options.cancellation)
        if await settle(handle, (lambda: None) if shielded else handle.cancel):
            if not shielded:
                raise Interrupted(handle)
            self.cancel_pending = True
        return handle.result()

    # --- the whole task --------------------------------------------------------------------

    async def perform(self, request: TaskRequest, body: Callable[[], Awaitable[T]]) -> T:
        """Run the task: wait for its prerequisites and its turn on its resources, run the body,
        release. On failure or cancellation undo what was done, newest first, then release."""
        self.one_patch = workflow.patched(ONE_PATCH)
        self._ordered = self.patched(ORDERING_PATCH)
        self.cancel_safe = self.patched(CANCEL_PATCH)
        try:
            if self._ordered:
                await self._wait_turn(request)
            self._set_state("running")
            result = await body()
        except TaskFailed as failed:
            undone = await self._compensate()
            await self.release()
            raise self._failure(failed, *undone) from None
        except (asyncio.CancelledError, CancelledError):
            await self._cancelled()
            raise
        except (ActivityError, ChildWorkflowError) as err:
            # A cancel met in a wait outside the steps (prerequisites, tasks placed on a host):
            # the wait's activities were cancelled. Before CANCEL_PATCH it ended the task as is.
            if not (self.cancel_safe and is_cancelled_exception(err)):
                raise
            await self._cancelled()
            raise asyncio.CancelledError() from None
        except workflow.ContinueAsNewError:
            raise  # the next run carries on with the claims this one holds
        await self.release()
        self.phase("done")
        self._state.current_step = None
        self._set_state("complete")
        return result

    async def _cancelled(self) -> None:
        """The task was cancelled: the waits it was in end, its undos run newest first, what it
        held is released, and it is ``cancelled``."""
        self.log("task cancelled; undoing")
        for record in self._state.steps:
            if record.state == StepState.RUNNING:  # a wait the cancel ended
                record.state, record.finished_at, record.detail = (
                    StepState.FAILED, workflow.now(), "cancelled")
        await asyncio.shield(self._compensate())
        await asyncio.shield(self.release())
        self.phase("failed")
        self._set_state("cancelled")

    async def _wait_turn(self, request: TaskRequest) -> None:
        if request.after:
            record = self.begin("wait for prerequisites")
            self._set_state("waiting", [f"prerequisite {t}" for t in request.after])
            outcomes = await self.await_tasks(request.after)
            record.finished_at = workflow.now()
            record.detail = "; ".join(o.detail for o in outcomes)
            problem = self.prerequisite_failure(outcomes)
            record.state = StepState.FAILED if problem else StepState.DONE
            if problem is not None:
                raise TaskFailed(problem, record.name)
        resources = sorted(set(request.resources()))
        if resources and request.ordered:
            await self.hold("wait for " + ", ".join(resources), resources)

    async def hold(self, name: str, resources: list[str]) -> None:
        """A step that takes more resources (counted slots such as ``migrate:cluster``) when
        their turn comes; ``unhold`` gives them back. A task holds these only after its own
        resources, and their holders wait for nothing else, so this cannot deadlock."""
        if not self._ordered:  # histories from before ordering held nothing
            return
        record = self.begin(name)

        def waiting(result: ClaimResult) -> None:
            record.detail = result.detail
            self._set_state("waiting", [b.describe() for b in result.blockers])

        granted = await self.claim(self.kind, sorted(set(resources)), on_wait=waiting)
        record.state, record.finished_at, record.detail = (StepState.DONE, workflow.now(),
                                                           granted.detail)
        self._set_state("running")

    async def unhold(self, resources: list[str]) -> None:
        if self._ordered:
            await self.release(sorted(set(resources)))

    async def wait_for_tasks(self, name: str, task_ids: list[str]) -> None:
        """A step that waits until every one of ``task_ids`` has ended, however it ended."""
        record = self.begin(name)
        outcomes = await self.await_tasks(task_ids)
        record.state, record.finished_at = StepState.DONE, workflow.now()
        record.detail = "; ".join(o.detail for o in outcomes)

    def _set_state(self, state: TaskState, waiting_on: list[str] | None = None) -> None:
        check_task_transition(self._state.state, state)
        self._state.state = state
        self._state.waiting_on = waiting_on or []
        if not self._ordered:
            return
        memo: dict[str, Any] = {"waiting_on": self._state.waiting_on}
        if state == "running" and not self.shown("started_at"):
            memo["started_at"] = workflow.now().isoformat()
            if self.one_patch and self.granted_at_submit and not self.shown("waiting_on"):
                # Never waited: no memo write (one visibility write fewer per task). What a
                # reader assumes holds (``starter.tasks.status_of``): it waits on nothing and
                # its start is its submission, also after a later wait (``hold``).
                memo = {}
                self.assume_shown(waiting_on=[], started_at=None)
        self.show_state(state, **memo)

    async def _compensate(self) -> tuple[list[str], list[str]]:
        """Run the registered undos, newest first; returns (undone, failed to undo)."""
        self.phase("compensate")
        done: list[str] = []
        failed: list[str] = []
        while (undo := self.undo.pop_newest()) is not None:
            record = self.begin(undo.name, StepState.COMPENSATING)
            try:
                result = await self._run(undo.activity, undo.arg, undo.options)
                record.state, record.detail = StepState.COMPENSATED, getattr(result, "detail", None)
                done.append(undo.name)
            except ActivityError as err:
                # Loud, but keep undoing the rest: a partial undo beats none.
                record.state = StepState.FAILED
                record.detail = f"undo failed: {error_info(err.cause or err).message}"
                failed.append(undo.name)
                self.log("compensation failed", step=undo.name, error=record.detail)
            record.finished_at = workflow.now()
        return done, failed

    def _failure(self, failed: TaskFailed, compensated: list[str], not_undone: list[str]
                 ) -> ApplicationError:
        self.phase("failed")
        state, info = self._state, failed.info
        failure = TaskFailure(
            task_id=state.task_id, kind=self.kind, step=failed.step,
            error_type=info.type.value, message=info.message, field=info.field,
            retryable=info.retryable, libvirt_code=info.libvirt_code,
            host=info.host or state.host, vm=info.vm or state.vm, compensated=compensated,
            compensation_failed=not_undone,
        )
        self.log("task failed", error=info.message, error_type=info.type,
                 compensated=compensated)
        self._set_state("error")
        if self._ordered:
            self.show_state("error", error={"type": info.type.value, "message": info.message,
                                            "step": failed.step})
        return ApplicationError(f"{self.kind} failed at '{failure.step}': {info.message}",
                                failure.model_dump(mode="json"), type=info.type.value,
                                non_retryable=True)
