"""The plans and reports of the fault runs (``bench.faults``): what each run's fault is, drawn
from a seed, and what each run found.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.fault_checks import Violation

FAULT_KINDS = ("cancel-clear", "cancel-child", "stop-worker", "terminate-clear")
# Faults only hosts that can die (a lab's libvirtd hosts) can take, besides FAULT_KINDS.
HOST_FAULT_KINDS = ("kill-destination",)
# Faults only a worker in a process of its own can take (``bench.fault_process``).
PROCESS_FAULT_KINDS = ("kill-worker",)
# The lab runs' kinds by default: a worker process on libvirtd hosts takes every kind.
LAB_FAULT_KINDS = ("cancel-clear", "kill-worker", "kill-destination")
ALL_FAULT_KINDS = FAULT_KINDS + HOST_FAULT_KINDS + PROCESS_FAULT_KINDS
PHASES = ("before-move", "after-move", "anywhere")


@dataclass(frozen=True)
class Shape:
    """What each run looks like: ``vms`` on the source, each of one of ``memory_mib`` (MiB),
    ``hosts`` in all (one source), at most ``parallel`` moves in flight, each slowed to take
    ``move_seconds`` (0: as long as the real move); ``phase_seconds``: how long a phase of a
    move lasts (default: half of ``move_seconds``); ``settle_seconds`` for every task to end
    after the fault. ``bandwidth_mib_s``: the live migrations' bandwidth cap (MiB/s, 0: none;
    the lab's moves are slowed by it instead of by ``move_seconds``)."""

    vms: int = 12
    hosts: int = 3
    parallel: int = 3
    move_seconds: float = 0.8
    phase_seconds: float | None = None
    settle_seconds: float = 120.0
    memory_mib: tuple[int, ...] = (64, 128, 256)
    bandwidth_mib_s: int = 0

    @property
    def phase(self) -> float:
        return self.move_seconds / 2 if self.phase_seconds is None else self.phase_seconds


@dataclass(frozen=True)
class Plan:
    """A run's fault, drawn before the run: its kind; it strikes ``delay`` s after ``after_moved``
    VMs have moved and a migration is in ``phase`` (one of ``PHASES``); ``pause``: seconds
    without a worker (``stop-worker``, ``kill-worker``)."""

    kind: str
    after_moved: int
    phase: str
    delay: float
    pause: float

    def __str__(self) -> str:
        pause = (f", {self.pause:.2f}s without a worker"
                 if self.kind in ("stop-worker", "kill-worker") else "")
        where = "" if self.phase == "anywhere" else f" with a migration {self.phase}"
        return f"{self.kind} {self.delay:.2f}s after {self.after_moved} moved{where}{pause}"


@dataclass
class RunReport:
    """One run: its plan, where the fault landed (``point``: what the clear showed then, or why
    it did not land), how the clear ended, violations. After faults the design leaves to a
    Reconcile: what the tasks left that broke an invariant (``left``, for the record) and the
    Reconcile's findings; ``violations`` are what is still wrong after it."""

    index: int
    seed: str
    plan: Plan
    landed: bool = False
    point: str = ""
    clear_end: str = ""
    left: list[Violation] = field(default_factory=list)
    reconcile: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        head = (f"run {self.index} (seed {self.seed}): {self.plan}; "
                f"{'landed' if self.landed else 'missed'}: {self.point}; clear {self.clear_end}"
                f"; {len(self.violations)} violations; {self.seconds:.1f}s")
        more = [f"    left for reconcile: {v}" for v in self.left]
        more += [f"    reconcile: {finding}" for finding in self.reconcile]
        return [head, *more, *(f"    {v}" for v in self.violations)]


@dataclass
class Report:
    """Every run of one call of ``run_faults``."""

    seed: int
    runs: list[RunReport] = field(default_factory=list)

    @property
    def violations(self) -> list[tuple[RunReport, Violation]]:
        return [(run, v) for run in self.runs for v in run.violations]

    def summary(self) -> str:
        kinds = sorted({r.plan.kind for r in self.runs})
        per_kind = ", ".join(
            f"{k}: {sum(1 for r in self.runs if r.plan.kind == k)} runs "
            f"({sum(1 for r in self.runs if r.plan.kind == k and r.landed)} landed, "
            f"{sum(len(r.violations) for r in self.runs if r.plan.kind == k)} violations)"
            for k in kinds)
        lines = [f"fault runs: seed {self.seed}, {len(self.runs)} runs, "
                 f"{len(self.violations)} violations; {per_kind}"]
        for run in self.runs:
            lines += run.lines()
        return "\n".join(lines)


def plan_run(seed: int, index: int, kinds: Sequence[str], shape: Shape,
             phases: Sequence[str] = PHASES) -> tuple[str, Plan]:
    """Run ``index``'s fault: kind ``kinds[index % len(kinds)]``, phase ``phases[index //
    len(kinds) % len(phases)]`` (so a few runs of each kind cover every phase), the rest drawn
    from the generator seeded with ``"<seed>:<index>"`` (returned too, for the report). A
    phase's delay is at most half the phase, so the fault lands while that phase lasts."""
    run_seed = f"{seed}:{index}"
    rng = random.Random(run_seed)
    after_moved = rng.randrange(0, max(1, shape.vms - shape.parallel))
    phase = phases[index // len(kinds) % len(phases)]
    longest = 3 * shape.phase if phase == "anywhere" else shape.phase / 2
    return run_seed, Plan(kind=kinds[index % len(kinds)], after_moved=after_moved, phase=phase,
                          delay=round(rng.uniform(0.0, longest), 3),
                          pause=round(rng.uniform(0.0, 1.0), 3))
