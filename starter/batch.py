"""Several tasks with dependencies among them, submitted as one request.

    [{"key": "stop-a", "kind": "StopVm", "request": {"name": "a"}},
     {"key": "stop-b", "kind": "StopVm", "request": {"name": "b"}},
     {"key": "gone", "kind": "DestroyVm", "request": {"name": "a"}, "after": ["stop-a", "stop-b"]}]

``after`` names other items by key, or tasks that already exist by id. The whole batch is checked
first (every request, every reference, no cycle); only then is any task submitted, in an order
where each task's prerequisites already exist. A bad batch raises ``RequestError`` naming the
item's field.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from starter.errors import RequestError
from taskomatic.models import Model, TaskRequest
from workflows.kinds import TaskKind


class BatchItem(Model):
    key: str = Field(min_length=1, max_length=100)
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
    keys = [item.key for item in items]
    for i, key in enumerate(keys):
        if keys.index(key) != i:
            raise RequestError(f"items[{i}].key", f"duplicate key {key!r}")
    ids = {item.key: f"{_slug(kinds, item.kind)}-{item.key}-{uuid.uuid4().hex[:8]}"
           for item in items}
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
    order: list[PlannedTask] = []
    state: dict[str, str] = {}  # key → "visiting" | "done"

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = " → ".join([*path[path.index(key):], key])
            raise RequestError(f"items[{keys.index(key)}].after",
                               f"dependency cycle: {cycle}")
        state[key] = "visiting"
        for ref in planned[key].in_batch_after:
            visit(ref, [*path, key])
        state[key] = "done"
        order.append(planned[key])

    for key in keys:
        visit(key, [])
    return order
