"""Waiting for other tasks: ClearHost's step 2 (tasks placed on a host before maintenance)."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client

from taskomatic.migration import WaitTasksInput, WaitTasksResult


class TaskWaitActivities:
    """Activities that wait on other tasks through their Temporal handles (no polling)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn
    async def wait_for_tasks(self, inp: WaitTasksInput) -> WaitTasksResult:
        """Wait until every task in ``inp.task_ids`` has ended (any outcome), heartbeating."""
        waits = [asyncio.ensure_future(self._ended(task_id)) for task_id in inp.task_ids]
        try:
            while True:
                done = sum(1 for w in waits if w.done())
                activity.heartbeat({"finished": done, "of": len(waits)})
                if done == len(waits):
                    break
                await asyncio.wait(waits, timeout=5.0, return_when=asyncio.ALL_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return WaitTasksResult(finished=len(waits),
                               detail=f"{len(waits)} tasks placed before maintenance ended")

    async def _ended(self, task_id: str) -> None:
        try:
            await self.client.get_workflow_handle(task_id).result()
        except asyncio.CancelledError:
            raise
        except Exception:  # failed, cancelled, terminated or unknown: ended all the same
            return
