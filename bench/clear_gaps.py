"""Where a clear-host's time goes, read from the workflow histories of its children.

A child MigrateVm holds its migration slots only around its migrate step (the
``migrate_domain`` activity): the makespan is close to the ideal when those steps follow each
other with no gap on every allowed slot. From each child's history: when its migrate step
started and ended (``ActivityTaskStarted`` → ``ActivityTaskCompleted``, server time). Figures:

- ``migrate_step_s``: mean duration of one migrate step;
- ``slot_busy``: Σ migrate steps ÷ (allowed parallelism times the span from the first step's start
  to the last one's end) — 1.0 means the allowed slots never idled;
- ``lead_s`` / ``tail_s``: from the clear's start to the first migrate step, from the last step
  to the clear's end;
- ``handover_ms``: for a step that started while fewer than ``allowed`` steps ran, the time since
  the latest step ended before it (how long a freed slot stayed idle), p50 / p90 / count;
- ``under_filled_s``: wall time during which fewer than ``allowed`` steps ran (within the span).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.report import percentile

MIGRATE_ACTIVITY = "migrate_domain"


async def migrate_steps(client: Client, workflow_ids: Iterable[str], concurrency: int = 16
                        ) -> list[tuple[float, float]]:
    """(start, end) of every completed migrate step in the histories of ``workflow_ids``, in
    seconds of the server's clock (epoch)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> list[tuple[float, float]]:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        migrate: set[int] = set()
        started: dict[int, float] = {}
        spans = []
        for ev in history.events:
            at = ev.event_time.ToMicroseconds() / 1e6
            if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                if ev.activity_task_scheduled_event_attributes.activity_type.name == \
                        MIGRATE_ACTIVITY:
                    migrate.add(ev.event_id)
            elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                scheduled = ev.activity_task_started_event_attributes.scheduled_event_id
                if scheduled in migrate:
                    started[scheduled] = at
            elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                scheduled = ev.activity_task_completed_event_attributes.scheduled_event_id
                if scheduled in started:
                    spans.append((started[scheduled], at))
        return spans

    found = await asyncio.gather(*(one(w) for w in workflow_ids))
    return sorted(span for spans in found for span in spans)


def slot_use(spans: list[tuple[float, float]], allowed: int, began: datetime,
             ended: datetime) -> dict[str, float | int]:
    """The figures of the module's docstring for the migrate steps ``spans`` of one clear that
    ran from ``began`` to ``ended`` (aware datetimes) with ``allowed`` slots."""
    if not spans:
        return {}
    first, last = spans[0][0], max(end for _, end in spans)
    busy = sum(end - start for start, end in spans)
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda p: (p[0], p[1]))
    running, under, since, gaps, last_end = 0, 0.0, first, [], None
    for at, delta in points:
        if running < allowed:
            under += at - since
        if delta == 1 and running < allowed and last_end is not None:
            gaps.append(at - last_end)
        running += delta
        since = at
        if delta == -1:
            last_end = at
    return {
        "migrate_step_s": round(busy / len(spans), 4),
        "slot_busy": round(busy / (allowed * (last - first)), 3) if last > first else 1.0,
        "lead_s": round(first - began.timestamp(), 3),
        "tail_s": round(ended.timestamp() - last, 3),
        "handover_ms_p50": round(percentile(gaps, 50) * 1000, 1) if gaps else 0.0,
        "handover_ms_p90": round(percentile(gaps, 90) * 1000, 1) if gaps else 0.0,
        "handovers": len(gaps),
        "under_filled_s": round(under, 2),
    }
