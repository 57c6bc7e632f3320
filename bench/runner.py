"""Bounded-concurrency driver shared by both sides: chains of tasks, timed one by one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol


class Handle(Protocol):
    async def result(self) -> Any: ...


@dataclass(frozen=True)
class TaskSample:
    kind: str
    submit_s: float  # call → handle returned (client-side checks + StartWorkflowExecution)
    latency_s: float  # call → result received


@dataclass
class Recorder:
    samples: list[TaskSample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def timed(kind: str, submit: Callable[[], Awaitable[Handle]], rec: Recorder) -> Any:
    """Submit one task and wait for its result, recording both times."""
    t0 = perf_counter()
    handle = await submit()
    t1 = perf_counter()
    result = await handle.result()
    rec.samples.append(TaskSample(kind, t1 - t0, perf_counter() - t0))
    return result


Chain = Callable[[int, Recorder], Awaitable[None]]


async def run_chains(n: int, concurrency: int, chain: Chain, rec: Recorder) -> float:
    """Run chains 0..n-1 with at most ``concurrency`` in flight; returns the wall time (s).

    A chain that fails is recorded and abandoned; the others go on.
    """
    indices = iter(range(n))

    async def slot() -> None:
        for i in indices:
            try:
                await chain(i, rec)
            except Exception as err:  # reported, not hidden
                rec.failures.append(f"chain {i}: {type(err).__name__}: {err}")

    t0 = perf_counter()
    await asyncio.gather(*(slot() for _ in range(max(1, min(concurrency, n)))))
    return perf_counter() - t0
