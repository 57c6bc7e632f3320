"""The baseline: a bare Temporal workflow running N trivial activities one after another.

The no-op activity is synchronous, like every taskomatic activity, so it goes through the same
thread pool; its payloads are small pydantic models through the same pydantic data converter.
This module is what the workflow sandbox re-imports for every run, so it imports nothing else
of the bench (the client side is ``bench.baseline_driver``).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from bench.models import BaselineRequest, BaselineResult, NoopInput, NoopResult


@activity.defn(name="bench_noop")
def noop(inp: NoopInput) -> NoopResult:
    return NoopResult(step=inp.step)


@workflow.defn(name="BenchBaseline")
class BaselineWorkflow:
    @workflow.run
    async def run(self, req: BaselineRequest) -> BaselineResult:
        for step in range(req.activities):
            await workflow.execute_activity(
                noop, NoopInput(task_id=req.task_id, step=step),
                start_to_close_timeout=timedelta(seconds=30))
        return BaselineResult(task_id=req.task_id, activities=req.activities)
