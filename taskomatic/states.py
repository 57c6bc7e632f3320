"""Host and task states and the transitions between them, in one table each (after OpenStack
TaskFlow's ``states.py``).

A host is ``up`` (in service: placement may pick it), in ``maintenance`` (being cleared, or
cleared), in ``maintenance_failed`` (a clear ended with VMs it could not move),
``non_responsive`` (it stopped answering while up: the worker's host monitor saw no answer for
``TASKOMATIC_HOST_UNRESPONSIVE_SECONDS``; it is ``up`` again when it answers) or ``down`` (out of
service, taken out by an operator). Every change of a host's state is one named
``HostTransition``: the table ``TRANSITIONS`` says from which states it may start and the
state it leads to; the inventory applies it under the host's row lock after
``check_transition`` allowed it.

A transition whose target is the host's current state is always allowed and changes nothing, so
every transition is idempotent (a retried activity reports "already …").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

from taskomatic.errors import ErrorType, task_error


class HostState(StrEnum):
    """A host's state in the inventory; only ``up`` hosts take new work."""

    UP = "up"
    MAINTENANCE = "maintenance"
    MAINTENANCE_FAILED = "maintenance_failed"
    DOWN = "down"
    NON_RESPONSIVE = "non_responsive"


class HostTransition(StrEnum):
    """The named changes of a host's state (see ``TRANSITIONS`` for each one's rule)."""

    ENTER_MAINTENANCE = "enter_maintenance"
    END_MAINTENANCE = "end_maintenance"
    FAIL_MAINTENANCE = "fail_maintenance"
    ACTIVATE = "activate"
    CONFIRM_UP = "confirm_up"
    MARK_DOWN = "mark_down"
    LOSE_CONTACT = "lose_contact"
    REGAIN_CONTACT = "regain_contact"


@dataclass(frozen=True)
class Rule:
    """A transition may start from any of ``sources`` (in the order error messages list them)
    and leads to ``target``."""

    sources: tuple[HostState, ...]
    target: HostState

    def allows(self, current: HostState) -> bool:
        """True when a host in ``current`` may take this transition (its target included)."""
        return current in self.sources or current == self.target


_ANY = tuple(HostState)
IN_MAINTENANCE = (HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED)  # being cleared, or done

TRANSITIONS: Mapping[HostTransition, Rule] = {
    # ClearHost's first step: from up or maintenance; not from down or non_responsive (the
    # host's VMs cannot be reached to move them).
    HostTransition.ENTER_MAINTENANCE: Rule((HostState.UP, *IN_MAINTENANCE), HostState.MAINTENANCE),
    # ClearHost's end: every VM moved (or stopped, if asked).
    HostTransition.END_MAINTENANCE: Rule(IN_MAINTENANCE, HostState.MAINTENANCE),
    # ClearHost's end with VMs it could not move, and its undo when it fails.
    HostTransition.FAIL_MAINTENANCE: Rule(IN_MAINTENANCE, HostState.MAINTENANCE_FAILED),
    # ActivateHost: back in service from any state.
    HostTransition.ACTIVATE: Rule(_ANY, HostState.UP),
    # RestoreHost's check that the host is in service (changes nothing when allowed).
    HostTransition.CONFIRM_UP: Rule((HostState.UP,), HostState.UP),
    # Out of service from any state (``lab down`` retiring its hosts).
    HostTransition.MARK_DOWN: Rule(_ANY, HostState.DOWN),
    # The host monitor: an up host that has not answered for the unresponsive time (a host in
    # maintenance or down keeps its state: an operator owns it).
    HostTransition.LOSE_CONTACT: Rule((HostState.UP,), HostState.NON_RESPONSIVE),
    # The host monitor: a non-responsive host answers again.
    HostTransition.REGAIN_CONTACT: Rule((HostState.NON_RESPONSIVE,), HostState.UP),
}


def check_transition(transition: HostTransition, host: str, current: HostState) -> HostState:
    """The state ``host`` (now in ``current``) reaches by ``transition``.

    Raises ``InvalidOperation`` (field ``host``) when the transition may not start from
    ``current``, e.g. "host 'h' is maintenance; expected one of up".
    """
    rule = TRANSITIONS[transition]
    if not rule.allows(current):
        allowed = ", ".join(s.value for s in rule.sources)
        raise task_error(ErrorType.INVALID_OPERATION,
                         f"host {host!r} is {current.value}; expected one of {allowed}",
                         field="host", host=host)
    return rule.target


def transition_to(state: HostState, allowed_from: Sequence[HostState]) -> HostTransition:
    """The transition an old-style request means: reach ``state`` from one of ``allowed_from``
    (empty: from any state). Raises ``ValueError`` when no transition of the table matches."""
    sources = set(allowed_from) or set(_ANY)
    for transition, rule in TRANSITIONS.items():
        if rule.target == state and set(rule.sources) | {rule.target} == sources | {state}:
            return transition
    listed = ", ".join(s.value for s in allowed_from) or "any state"
    raise ValueError(f"no host transition leads to {state.value} from {listed}")


# --- tasks ------------------------------------------------------------------------------------

# What operators see of a task: submitted, waiting its turn (prerequisites, a resource, migration
# slots), running, then one of the three ends.
TaskState = Literal["new", "waiting", "running", "complete", "error", "cancelled"]
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)
_ENDS: tuple[TaskState, ...] = ("complete", "error", "cancelled")

# The states a task may go to from each state. A running task waits again when a later step needs
# a resource (a migration's slots, the tasks placed on a host before its maintenance); an ended
# task never changes. Going to the state it is in is always allowed (a repeated publication).
TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    "new": frozenset({"waiting", "running", *_ENDS}),
    "waiting": frozenset({"running", *_ENDS}),
    "running": frozenset({"waiting", *_ENDS}),
    "complete": frozenset(),
    "error": frozenset(),
    "cancelled": frozenset(),
}


def check_task_transition(current: TaskState, target: TaskState) -> None:
    """Raises ``ValueError`` when a task in ``current`` may not go to ``target`` (a bug in a
    workflow, never an operator's mistake)."""
    if target != current and target not in TASK_TRANSITIONS[current]:
        raise ValueError(f"a task cannot go from {current} to {target}")
