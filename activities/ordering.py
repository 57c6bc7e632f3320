"""Activities of per-resource ordering and prerequisites.

``claim_resources`` and ``release_resources`` are short database transactions. After a release,
the tasks at the front of the freed lines get a ``wake`` signal and re-check their turn; nothing
polls. ``await_task_end`` waits for another task to end, however it ends (completed, failed,
cancelled, terminated): it serves prerequisites and lets a waiting task notice that the task
ahead of it was terminated without releasing. All three run on the worker's ordering queue,
whose many cheap slots (coroutines) keep waiting tasks from using up the slots of working
activities.
"""

from __future__ import annotations

import asyncio
import contextlib

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeats import own_heartbeats
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.models import (
    AwaitTaskInput,
    ClaimInput,
    ClaimResult,
    ReleaseClaimsResult,
    ReleaseInput,
    TaskOutcome,
    TaskOutcomeStatus,
    capacity_of,
)
from taskomatic.settings import Settings

WAKE_SIGNAL = "wake"
HEARTBEAT_SECONDS = 5.0
# A task id found in a line but not (yet) in Temporal: its starter may be between putting it in
# line and starting it. Look again for this long before calling it gone.
NOT_FOUND_GRACE_SECONDS = 30.0

_CLOSED: dict[WorkflowExecutionStatus, TaskOutcomeStatus] = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}


class OrderingActivities:
    def __init__(self, db: Database, client: Client, settings: Settings) -> None:
        self.db = db
        self.client = client
        self.settings = settings

    @activity.defn
    async def claim_resources(self, inp: ClaimInput) -> ClaimResult:
        capacities = {name: capacity_of(name, self.settings) for name in inp.resources}
        result, woken = await asyncio.to_thread(ordering.acquire, self.db, inp.task_id, inp.kind,
                                                capacities, inp.closed)
        if result.purged:
            get_logger(task_id=inp.task_id).warning(
                "dropped the claims of tasks that ended without releasing", tasks=result.purged)
        await wake_tasks(self.client, woken)
        return result

    @activity.defn
    async def release_resources(self, inp: ReleaseInput) -> ReleaseClaimsResult:
        released, woken = await asyncio.to_thread(ordering.release, self.db, inp.task_id,
                                                  inp.resources)
        await wake_tasks(self.client, woken)
        return ReleaseClaimsResult(released=released, woken=woken)

    @activity.defn
    @own_heartbeats
    async def await_task_end(self, inp: AwaitTaskInput) -> TaskOutcome:
        beat = asyncio.create_task(_heartbeat_forever())
        try:
            return await self._outcome(inp.task_id)
        finally:
            beat.cancel()

    async def _outcome(self, task_id: str) -> TaskOutcome:
        handle = self.client.get_workflow_handle(task_id)
        deadline = asyncio.get_running_loop().time() + NOT_FOUND_GRACE_SECONDS
        while True:
            try:
                await handle.result(follow_runs=True)
                return TaskOutcome(task_id=task_id, status="completed")
            except WorkflowFailureError as err:
                desc = await handle.describe()
                status = _CLOSED.get(desc.status or WorkflowExecutionStatus.FAILED, "failed")
                return TaskOutcome(task_id=task_id, status=status,
                                   message=str(err.cause or err))
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    return TaskOutcome(task_id=task_id, status="not_found",
                                       message="no such task")
                await asyncio.sleep(2.0)


async def wake_tasks(client: Client, task_ids: list[str]) -> None:
    """Tell waiting tasks to re-check their turn. A task that has ended needs no wake-up."""
    async def one(task_id: str) -> None:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(task_id).signal(WAKE_SIGNAL)
    await asyncio.gather(*(one(t) for t in task_ids))


async def _heartbeat_forever() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_SECONDS)
