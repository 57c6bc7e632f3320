"""Several tasks with dependencies among them, submitted as one request.

    [{"key": "stop-a", "kind": "StopVm", "request": {"name": "a"}},
     {"key": "stop-b", "kind": "StopVm", "request": {"name": "b"}},
     {"key": "gone", "kind": "DestroyVm", "request": {"name": "a"}, "after": ["stop-a", "stop-b"]}]

``after`` names other items by key, or tasks that already exist by id. The whole batch is checked
first (every request, every reference, no cycle); only then is any task submitted, in an order
where each task's prerequisites already exist; items whose prerequisites allow it keep their
listed order (so tasks that join resource lines at once join them in that order). A bad batch
raises ``RequestError`` naming the item's field.

Limits: at most ``MAX_BATCH_TASKS`` (5,000) items; a key is 1-100 letters, digits, '.', '_', ':'
or '-' starting with a letter or digit, so the task id made from it (``vm-stop-KEY-1a2b3c4d``) is
a valid task id. Validation is iterative (``graphlib``): a chain as long as the cap is fine.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError

from starter.errors import RequestError
from taskomatic.models import Model, TaskRequest, new_task_id
from workflows.kinds import TaskKind

MAX_BATCH_TASKS = 5_000
"""The most tasks one batch may hold (each is submitted in turn, one Temporal call each)."""

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def _check_key(value: str) -> str:
    if not _KEY_RE.fullmatch(value):
        raise ValueError("must be 1-100 letters, digits, '.', '_', ':' or '-', starting with a "
                         f"letter or digit (got {value!r})")
    return value


class BatchItem(Model):
    key: Annotated[str, AfterValidator(_check_key)]
    kind: str
    request: dict[str, Any] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list)


class PlannedTask(Model):
    key: str
    kind: str
    task_id: str
    request: TaskRequest
    in_batch_after: list[str]  # keys of items it waits for


def plan_batch(items: list[BatchItem], kinds: Mapping[str, TaskKind]) -> list[PlannedTask]:
    """Validate a batch against the task ``kinds`` by name and order it so every task comes
    after its prerequisites.

    Raises ``RequestError`` naming the item's field (``items[2].request.name``) on the first
    problem. External prerequisites (ids not among the keys) are left for the caller to check.
    """
    if len(items) > MAX_BATCH_TASKS:
        raise RequestError("items", f"at most {MAX_BATCH_TASKS} tasks per batch (got "
                                    f"{len(items)}); split it, using --after between the parts")
    keys = [item.key for item in items]
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key in seen:
            raise RequestError(f"items[{i}].key", f"duplicate key {key!r}")
        seen.add(key)
    ids = {item.key: new_task_id(_slug(kinds, item.kind), item.key) for item in items}
    planned: dict[str, PlannedTask] = {}
    for i, item in enumerate(items):
        if item.kind not in kinds:
            raise RequestError(f"items[{i}].kind", f"unknown task kind {item.kind!r} (known: "
                               f"{', '.join(sorted(kinds))})")
        in_batch = [ref for ref in item.after if ref in ids]
        outside = [ref for ref in item.after if ref not in ids]
        try:
            req = kinds[item.kind].request.model_validate(
                {**item.request, "after": [*item.request.get("after", []), *outside,
                                           *(ids[ref] for ref in in_batch)]})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RequestError(f"items[{i}].request.{where}",
                               first["msg"].removeprefix("Value error, ")) from None
        planned[item.key] = PlannedTask(key=item.key, kind=item.kind, task_id=ids[item.key],
                                        request=req, in_batch_after=in_batch)
    return _dependency_order(planned, keys)


def _slug(kinds: Mapping[str, TaskKind], name: str) -> str:
    return kinds[name].slug if name in kinds else "task"


def _dependency_order(planned: dict[str, PlannedTask], keys: list[str]) -> list[PlannedTask]:
    """The tasks, each after its in-batch prerequisites, otherwise in listed order (the ready
    task listed first goes next). ``RequestError`` naming the first listed item of a cycle."""
    index = {key: i for i, key in enumerate(keys)}
    sorter = TopologicalSorter({key: planned[key].in_batch_after for key in keys})
    try:
        sorter.prepare()
    except CycleError as err:
        cycle = list(reversed(err.args[1]))[:-1]  # each item waits for the next one
        first = min(range(len(cycle)), key=lambda i: index[cycle[i]])
        cycle = cycle[first:] + cycle[:first]
        raise RequestError(f"items[{index[cycle[0]]}].after",
                           f"dependency cycle: {' → '.join([*cycle, cycle[0]])}") from None
    ready = [index[key] for key in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[PlannedTask] = []
    while ready:
        key = keys[heapq.heappop(ready)]
        order.append(planned[key])
        sorter.done(key)
        for now_ready in sorter.get_ready():
            heapq.heappush(ready, index[now_ready])
    return order
