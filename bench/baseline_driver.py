"""The client side of the baseline: one bare workflow per lifecycle task, same activity count."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial

from temporalio.client import Client

from bench.baseline import BaselineWorkflow
from bench.models import BaselineRequest, BaselineResult
from bench.runner import Chain, Recorder, timed


def baseline_chain(client: Client, task_queue: str, prefix: str,
                   steps: Sequence[tuple[str, int]]) -> Chain:
    """A VM's worth of baseline tasks: for each (kind, n) in ``steps``, a workflow running n
    no-op activities, each task submitted once the previous one has finished."""

    async def chain(index: int, rec: Recorder) -> None:
        for kind, activities in steps:
            task_id = f"bench-{kind.lower()}-{prefix}-{index}-{uuid.uuid4().hex[:6]}"
            req = BaselineRequest(task_id=task_id, activities=activities)
            submit = partial(client.start_workflow, BaselineWorkflow.run, req, id=task_id,
                             task_queue=task_queue)
            result: BaselineResult = await timed(kind, submit, rec)
            if result.activities != activities:
                raise RuntimeError(f"{task_id} ran {result.activities} activities")

    return chain
