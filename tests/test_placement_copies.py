"""Placement of a move with a storage copy (pure): ``takes_copies`` and ``copy_targets`` pick,
per pool type of the VM's local disks, the destination's roomiest local pool of that type, and
say why a host has none. No database, no Temporal."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from taskomatic import placement
from taskomatic.errors import ErrorType, error_info
from taskomatic.placement import CopyNeed, HostLoad, PlacementRequest, PoolRoom
from taskomatic.states import HostState

GIB = 2**30


def host(name: str, *rooms: PoolRoom) -> HostLoad:
    return HostLoad(name=name, state=HostState.UP, vcpus=8, memory_mib=8192,
                    local_pools=rooms)


def moving(*copies: CopyNeed, pinned: str | None = None) -> PlacementRequest:
    return PlacementRequest(vm="vm1", vcpus=1, memory_mib=512, exclude=("src",), field="to",
                            host=pinned, copies=copies)


def test_a_request_without_copies_passes_any_host() -> None:
    assert placement.takes_copies(host("a"), moving()) is None


def test_the_roomiest_pool_of_the_same_type_takes_the_copies() -> None:
    h = host("a", PoolRoom("small", "dir", 2 * GIB), PoolRoom("big", "dir", 5 * GIB),
             PoolRoom("vg", "logical", 9 * GIB))
    found = placement.copy_targets(h, moving(CopyNeed("dir", GIB), CopyNeed("dir", 3 * GIB)))
    assert found == {"dir": PoolRoom("big", "dir", 5 * GIB)}


def test_volumes_of_one_type_must_fit_together() -> None:
    h = host("a", PoolRoom("p", "dir", 3 * GIB))
    request = moving(CopyNeed("dir", 2 * GIB), CopyNeed("dir", 2 * GIB))
    assert placement.takes_copies(h, request) == (
        "has no local dir pool with room for 4GiB (largest: 3GiB free)")


def test_a_pool_of_another_type_does_not_count() -> None:
    h = host("a", PoolRoom("vg", "logical", 9 * GIB))
    assert placement.takes_copies(h, moving(CopyNeed("dir", 512 * 2**20))) == (
        "has no local dir pool with room for 512MiB")


def test_each_type_needs_its_own_pool() -> None:
    h = host("a", PoolRoom("p", "dir", 3 * GIB))
    request = moving(CopyNeed("dir", GIB), CopyNeed("logical", GIB))
    assert placement.takes_copies(h, request) == "has no local logical pool with room for 1GiB"


def test_choose_skips_a_host_without_room_and_explains_a_refusal() -> None:
    hosts = [host("a", PoolRoom("pa", "dir", GIB // 2)), host("b", PoolRoom("pb", "dir", GIB))]
    assert placement.choose(moving(CopyNeed("dir", GIB)), hosts).name == "b"
    with pytest.raises(ApplicationError) as caught:
        placement.choose(moving(CopyNeed("dir", 2 * GIB)), hosts)
    info = error_info(caught.value)
    assert info.type == ErrorType.NO_CAPACITY
    assert "a: has no local dir pool with room for 2GiB (largest: 512MiB free) " \
           "(takes_copies)" in info.message


def test_a_pinned_host_without_room_is_named_on_the_field() -> None:
    with pytest.raises(ApplicationError) as caught:
        placement.choose(moving(CopyNeed("dir", GIB), pinned="a"), [host("a")])
    info = error_info(caught.value)
    assert (info.type, info.field, info.host) == (ErrorType.HOST_NOT_AVAILABLE, "to", "a")
    assert info.message == "to: host 'a' has no local dir pool with room for 1GiB"


def test_plan_counts_the_copies_against_the_destination_pool() -> None:
    hosts = [host("a", PoolRoom("pa", "dir", 3 * GIB)), host("b", PoolRoom("pb", "dir", 2 * GIB))]
    moves = [(f"vm{i}", PlacementRequest(vm=f"vm{i}", vcpus=1, memory_mib=512, exclude=("src",),
                                         copies=(CopyNeed("dir", 2 * GIB),))) for i in range(3)]
    planned = placement.plan(moves, hosts)
    assert [m.destination for m in planned] == ["a", "b", None]
    assert planned[2].reason is not None and "has no local dir pool with room" in planned[2].reason
