"""The task-state table: what operators see of a task moves only forward, and an end is final."""

from __future__ import annotations

import pytest

from taskomatic.states import TASK_STATES, TASK_TRANSITIONS, check_task_transition


def test_every_state_has_a_row_and_ends_are_final() -> None:
    assert set(TASK_TRANSITIONS) == set(TASK_STATES)
    for end in ("complete", "error", "cancelled"):
        assert TASK_TRANSITIONS[end] == frozenset()
        for other in TASK_STATES:
            if other != end:
                with pytest.raises(ValueError, match=f"from {end} to {other}"):
                    check_task_transition(end, other)


@pytest.mark.parametrize(("current", "target"), [
    ("new", "waiting"), ("new", "running"), ("waiting", "running"), ("running", "waiting"),
    ("running", "complete"), ("waiting", "error"), ("waiting", "cancelled"),
    ("running", "running"),
])
def test_the_moves_a_task_makes_are_allowed(current: str, target: str) -> None:
    check_task_transition(current, target)  # type: ignore[arg-type]


def test_nothing_goes_back_to_new() -> None:
    for state in TASK_STATES:
        if state != "new":
            with pytest.raises(ValueError):
                check_task_transition(state, "new")
