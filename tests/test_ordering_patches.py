"""``ONE_PATCH`` stands for the patches released before it: its list names them exactly."""

from __future__ import annotations

from workflows.cancels import CANCEL_PATCH
from workflows.disks import DISKS_PATCH
from workflows.ordering import COVERED_BY_ONE_PATCH, ONE_PATCH, RELEASE_WITH_LAST_STEP
from workflows.runbook import ORDERING_PATCH


def test_one_patch_covers_the_released_patches_by_their_names() -> None:
    assert {ORDERING_PATCH, CANCEL_PATCH, DISKS_PATCH, RELEASE_WITH_LAST_STEP} == (
        COVERED_BY_ONE_PATCH)
    assert ONE_PATCH not in COVERED_BY_ONE_PATCH
