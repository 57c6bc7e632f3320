"""Models of per-resource ordering and prerequisites (the inputs and outputs of their activities).

A resource is a string naming what a task changes: ``vm:NAME``, ``host:NAME``, ``pool:NAME``, or a
counted slot such as ``migrate-out:HOST``. Plain resources admit one task at a time; slots admit
as many as their capacity, which the worker's settings decide (``capacity_of``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from taskomatic.models.base import Model
from taskomatic.settings import Settings

TaskOutcomeStatus = Literal["completed", "failed", "cancelled", "terminated", "timed_out",
                            "not_found"]


def capacity_of(resource: str, settings: Settings) -> int:
    """How many tasks may hold ``resource`` at once."""
    kind = resource.split(":", 1)[0]
    return {
        "migrate-out": settings.migrations_out_per_host,
        "migrate-in": settings.migrations_in_per_host,
        "migrate": settings.migrations_in_cluster,
    }.get(kind, 1)


class ClaimInput(Model):
    """Take a place in line for ``resources`` (all at once), and the lock if it is free."""

    task_id: str
    kind: str = ""
    resources: list[str] = Field(min_length=1)
    # Tasks seen closed by a watcher: their leftover claims are dropped first.
    closed: list[str] = Field(default_factory=list)


class Blocker(Model):
    resource: str
    task_id: str
    holds: bool  # True: it holds the resource; False: it is ahead of us in line

    def describe(self) -> str:
        return f"{self.resource} {'held by' if self.holds else 'queued behind'} {self.task_id}"


class ClaimResult(Model):
    granted: bool
    blockers: list[Blocker] = Field(default_factory=list)
    purged: list[str] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        if self.granted:
            return "resources free" if not self.purged else (
                f"resources free (dropped claims of closed tasks {', '.join(self.purged)})")
        return "waiting: " + "; ".join(b.describe() for b in self.blockers)

    def watch_target(self) -> str | None:
        """The task whose end would let us move: the nearest one ahead of us in line."""
        return self.blockers[0].task_id if self.blockers else None


class ReleaseInput(Model):
    task_id: str
    resources: list[str] | None = None  # None: everything the task holds or waits for


class ReleaseClaimsResult(Model):
    released: list[str] = Field(default_factory=list)
    woken: list[str] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        text = f"released {', '.join(self.released)}" if self.released else "held nothing"
        return text + (f"; woke {', '.join(self.woken)}" if self.woken else "")


class AwaitTaskInput(Model):
    task_id: str


class TaskOutcome(Model):
    task_id: str
    status: TaskOutcomeStatus
    message: str = ""

    @property
    def detail(self) -> str:
        return f"{self.task_id} {self.status}" + (f": {self.message}" if self.message else "")


class QueuedClaim(Model):
    """One row of the queue view: who holds or waits for what."""

    task_id: str
    kind: str
    resource: str
    seq: int
    holds: bool
