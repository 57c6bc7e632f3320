"""Host tasks: ``ClearHost`` (maintenance), ``ActivateHost`` and ``RestoreHost``.

ClearHost's runbook:
 1. enter maintenance — one transaction; from its commit no placement picks the host;
 2. wait for the tasks that placed work there before that commit (their Temporal results);
 3. list the VMs libvirt actually has on the host;
 4. migrate them as child ``MigrateVm`` tasks, at most ``parallel`` at once, restarting the
    history (continue-as-new) every ``batch`` VMs so a host with a thousand VMs stays bounded;
    each child picks its destination by placement (``workflows.move_steps.DestinationAttempts``
    → ``inventory.reserve_capacity`` → ``taskomatic.placement.choose``: never this host, which
    is in maintenance, and never one without room);
 5. end in ``maintenance`` (empty, or only stopped VMs left with ``stop_unmigratable``) or in
    ``maintenance_failed`` with a per-VM report of what could not move and why.

Cancelled, a fan-out task passes the cancel to each child it started (a child is never cut off
mid-move: each undoes its own work), waits until every one has ended, and only then undoes its own
steps (the host ends ``maintenance_failed``) and ends ``cancelled``; no further child starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.hosts import HostActivities
    from activities.migration import MigrationActivities
    from taskomatic.models import (
        ActivateHostRequest,
        ClearHostRequest,
        HostNameInput,
        HostRef,
        HostState,
        HostTaskProgress,
        HostTaskResult,
        HostTaskState,
        MigrateVmRequest,
        OriginVmsInput,
        PlanInput,
        RestoreHostRequest,
        SetHostStateInput,
        StopVmRequest,
        TaskRequest,
        VmMoveOutcome,
        VmTaskResult,
        child_task_id,
    )
    from taskomatic.states import HostTransition
    from taskomatic.temporal import TASK_KIND, TASK_VM

from workflows.cancels import settle
from workflows.migration import MigrateVm
from workflows.runbook import DATABASE, Runbook, Undo, workflow_type
from workflows.vm_stop import StopVm

Hosts = HostActivities
Moves = MigrationActivities
_DONE = ("moved", "already moved")
R = TypeVar("R", bound=TaskRequest)


class HostTask(Runbook):
    """Fan-out of child tasks over many VMs, bounded, with a ``moves`` progress query."""

    def __init__(self) -> None:
        super().__init__()
        self._carry = HostTaskState()
        self._moves = HostTaskProgress(host="")
        self._parallel = 1

    @workflow.query
    def moves(self) -> HostTaskProgress:
        """Moved / in flight / remaining / failed, and the time left estimated from the average
        migration so far (workflow time) spread over the allowed parallelism."""
        view = self._moves.model_copy()
        moved = sum(1 for o in self._carry.outcomes if o.outcome == "moved")
        left = view.remaining + view.in_flight
        if moved and left:
            view.eta_seconds = round(self._carry.busy_seconds / moved * left / self._parallel, 1)
        elif not left:
            view.eta_seconds = 0.0
        return view

    def start_moves(self, host: str, state: HostTaskState | None, parallel: int) -> None:
        self._carry = state or HostTaskState()
        self._parallel = parallel
        self._moves = HostTaskProgress(host=host, remaining=self._carry.remaining)
        self.on_host(host)
        self._count()

    def _count(self, remaining: int | None = None) -> None:
        outcomes = self._carry.outcomes
        self._moves.moved = sum(1 for o in outcomes if o.outcome in _DONE)
        self._moves.failed = sum(1 for o in outcomes if o.outcome in ("failed", "not managed"))
        if remaining is not None:
            self._moves.remaining = remaining
        total = self._moves.moved + self._moves.failed + self._moves.remaining
        self._state.percent = round(100.0 * (total - self._moves.remaining) / total, 1) \
            if total else None

    def handled(self) -> set[str]:
        return {o.vm for o in self._carry.outcomes}

    async def migrate_each(self, names: list[str], request: Callable[[str], MigrateVmRequest],
                           backlog: int = 0) -> None:
        """Run one child MigrateVm per VM, at most ``parallel`` at once; record each outcome.
        ``backlog``: VMs left for the next runs, counted as remaining meanwhile."""
        slots = asyncio.Semaphore(self._parallel)
        self._count(remaining=len(names) + backlog)

        async def one(name: str) -> None:
            async with slots:
                self._moves.remaining -= 1
                self._moves.in_flight += 1
                self._moves.in_flight_vms.append(name)
                began = workflow.now()
                try:
                    outcome = await self._child_migration(name, request(name))
                finally:
                    self._moves.in_flight -= 1
                    self._moves.in_flight_vms.remove(name)
                if outcome.outcome == "moved":
                    self._carry.busy_seconds += (workflow.now() - began).total_seconds()
                self._carry.outcomes.append(outcome)
                self._count()

        await self.together(one(name) for name in names)

    async def _child_migration(self, name: str, req: MigrateVmRequest) -> VmMoveOutcome:
        try:
            res = await self.child(MigrateVm.run, req, "migrate", name)
        except ChildWorkflowError as err:
            kind, reason = _child_failure(err)
            return VmMoveOutcome(vm=name, outcome="not managed" if kind == "UnknownVm"
                                 else "failed", reason=reason)
        moved = not any(note.startswith("already off") for note in res.notes)
        return VmMoveOutcome(vm=name, outcome="moved" if moved else "already moved",
                             destination=res.host)

    async def child(self, run: Callable[[Any, R], Awaitable[VmTaskResult]], req: R, slug: str,
                    vm: str) -> VmTaskResult:
        """Run the child task ``run`` (e.g. ``MigrateVm.run``) on ``req``, with the id
        ``<this task's id>-<slug>-<vm>``; its result, or ``ChildWorkflowError`` if it failed.

        If this task is cancelled meanwhile (CANCEL_PATCH), the child is cancelled too (once it
        has started, if it was starting) and awaited until it has finished its own undo; then
        ``asyncio.CancelledError`` is raised, whatever the child did. Should this task close
        anyway, the child is asked to cancel, never terminated."""
        info = workflow.info()
        options: dict[str, Any] = dict(
            id=child_task_id(info.workflow_id, slug, vm),
            search_attributes=TypedSearchAttributes([SearchAttributePair(TASK_KIND,
                                                                         workflow_type(run)),
                                                     SearchAttributePair(TASK_VM, vm)]))
        if not self.cancel_safe:
            old: VmTaskResult = await workflow.execute_child_workflow(run, req, **options)
            return old
        starting = asyncio.ensure_future(workflow.start_child_workflow(
            run, req, parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
            **options))
        cancelled = await settle(starting, lambda: None)
        handle = starting.result()
        if cancelled:
            handle.cancel()
        cancelled = await settle(handle, handle.cancel) or cancelled
        if cancelled:
            self.log("child ended after the cancel", child=handle.id)
            raise asyncio.CancelledError()
        result: VmTaskResult = handle.result()
        return result

    def result(self, host: str, state: HostState | None, **more: object) -> HostTaskResult:
        return HostTaskResult(task_id=workflow.info().workflow_id, kind=self.kind, host=host,
                              state=state, outcomes=self._carry.outcomes, runs=self._carry.run,
                              **more)

    def continue_later(self, req: ClearHostRequest | RestoreHostRequest) -> None:
        self._carry.run += 1
        self._carry.remaining = self._moves.remaining
        self.log("continuing as new", run=self._carry.run, handled=len(self._carry.outcomes))
        workflow.continue_as_new(req.model_copy(update={"resume": self._carry}))


def _child_failure(err: ChildWorkflowError) -> tuple[str, str]:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        if cause.details and isinstance(cause.details[0], dict):
            return str(cause.details[0].get("error_type")), cause.message
        return str(cause.type), cause.message
    return type(cause).__name__, str(cause or err)


@workflow.defn(name="ClearHost")
class ClearHost(HostTask):
    @workflow.run
    async def run(self, req: ClearHostRequest) -> HostTaskResult:
        return await self.perform(req, lambda: self._clear(req))

    async def _clear(self, req: ClearHostRequest) -> HostTaskResult:
        self.start_moves(req.host, req.resume, req.parallel)
        carry = self._carry
        if req.dry_run:
            return await self._plan(req)
        fail = Undo("mark maintenance failed", Hosts.set_host_state, SetHostStateInput(
            host=req.host, transition=HostTransition.FAIL_MAINTENANCE), DATABASE)
        # With CANCEL_PATCH the host is marked failed once it is in maintenance, so that a cancel
        # from then on (while waiting for tasks placed there, say) leaves it so; before, from
        # the first run's end of waiting.
        early = self.cancel_safe and carry.source is None
        if carry.source is None:
            entered = await self.step("enter maintenance", Hosts.begin_maintenance,
                                      HostNameInput(host=req.host), options=DATABASE,
                                      undo_once_done=fail if early else None)
            carry.source = HostRef(name=entered.host, uri=entered.uri,
                                   migration_uri=entered.migration_uri)
            placed = [t for t in entered.placed_tasks if t != workflow.info().workflow_id]
            if placed:
                await self.wait_for_tasks("wait for tasks placed before maintenance", placed)
        if not early:
            self.undo.add(fail)
        self.phase("run")
        listed = await self.step("list VMs on the host", Moves.list_host_domains, carry.source)
        todo = [d.name for d in listed.domains if d.name not in self.handled()]
        await self.migrate_each(todo[:req.batch], lambda name: MigrateVmRequest(
            name=name, from_host=req.host, limits=req.limits, requested_by=req.requested_by,
            copy_storage=req.copy_storage), backlog=max(0, len(todo) - req.batch))
        if len(todo) > req.batch:
            self.continue_later(req)
        await self._check_empty(req, carry.source)
        if req.stop_unmigratable:
            await self._stop_unmigratable(req)
        self.phase("finalize")
        stuck = [o for o in carry.outcomes if o.outcome in ("failed", "not managed")]
        final = HostState.MAINTENANCE_FAILED if stuck else HostState.MAINTENANCE
        await self.step(f"end in {final.value}", Hosts.set_host_state, SetHostStateInput(
            host=req.host, transition=HostTransition.FAIL_MAINTENANCE if stuck
            else HostTransition.END_MAINTENANCE), options=DATABASE)
        return self.result(req.host, final)

    async def _check_empty(self, req: ClearHostRequest, source: HostRef) -> None:
        """List the host again: a VM that appeared meanwhile gets a run of its own; one said
        to have moved but still there is reported, never hidden."""
        listed = await self.step("check the host is empty", Moves.list_host_domains, source)
        left = {d.name for d in listed.domains}
        if left - self.handled():
            self.continue_later(req)
        for outcome in self._carry.outcomes:
            if outcome.vm in left and outcome.outcome in _DONE:
                outcome.outcome, outcome.reason = "failed", (
                    f"still on {req.host} after it was moved to {outcome.destination}")
        self._count()

    async def _stop_unmigratable(self, req: ClearHostRequest) -> None:
        for outcome in self._carry.outcomes:
            if outcome.outcome != "failed":
                continue
            try:
                await self.child(StopVm.run, StopVmRequest(
                    name=outcome.vm, timeout_seconds=req.stop_timeout_seconds,
                    requested_by=req.requested_by), "stop", outcome.vm)
            except ChildWorkflowError as err:
                outcome.reason = f"{outcome.reason}; stop failed too: {_child_failure(err)[1]}"
                continue
            outcome.outcome = "stopped"
        self._count()

    async def _plan(self, req: ClearHostRequest) -> HostTaskResult:
        host = await self.step("look up host", Hosts.host_ref, HostNameInput(host=req.host),
                               options=DATABASE)
        listed = await self.step("list VMs on the host", Moves.list_host_domains, HostRef(
            name=host.name, uri=host.uri, migration_uri=host.migration_uri))
        plan = await self.step("plan destinations", Hosts.plan_moves, PlanInput(
            host=req.host, vms=[d.name for d in listed.domains], copy_storage=req.copy_storage),
            options=DATABASE)
        return self.result(req.host, host.state, dry_run=True, plan=plan.moves)


@workflow.defn(name="ActivateHost")
class ActivateHost(HostTask):
    @workflow.run
    async def run(self, req: ActivateHostRequest) -> HostTaskResult:
        return await self.perform(req, lambda: self._activate(req))

    async def _activate(self, req: ActivateHostRequest) -> HostTaskResult:
        self.start_moves(req.host, None, 1)
        done = await self.step("return to service", Hosts.set_host_state, SetHostStateInput(
            host=req.host, transition=HostTransition.ACTIVATE), options=DATABASE)
        return self.result(req.host, done.state)


@workflow.defn(name="RestoreHost")
class RestoreHost(HostTask):
    @workflow.run
    async def run(self, req: RestoreHostRequest) -> HostTaskResult:
        return await self.perform(req, lambda: self._restore(req))

    async def _restore(self, req: RestoreHostRequest) -> HostTaskResult:
        self.start_moves(req.host, req.resume, req.parallel)
        await self.step("check the host is in service", Hosts.set_host_state, SetHostStateInput(
            host=req.host, transition=HostTransition.CONFIRM_UP), options=DATABASE)
        self.phase("run")
        found = await self.step("list VMs that came from the host", Hosts.vms_with_origin,
                                OriginVmsInput(host=req.host, exclude=sorted(self.handled())),
                                options=DATABASE)
        await self.migrate_each(found.names[:req.batch], lambda name: MigrateVmRequest(
            name=name, to=req.host, limits=req.limits, requested_by=req.requested_by),
            backlog=max(0, len(found.names) - req.batch))
        if len(found.names) > req.batch:
            self.continue_later(req)
        return self.result(req.host, HostState.UP)
