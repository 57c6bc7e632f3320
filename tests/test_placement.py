"""Placement as pure functions: each filter, the weighers' order, the errors ``choose`` raises,
and ``plan`` agreeing with ``choose``. No database, no Temporal."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from taskomatic import placement
from taskomatic.errors import ErrorInfo, ErrorType, error_info
from taskomatic.models import HostRecord, PlannedMove
from taskomatic.placement import HostLoad, PlacementRequest, VmSize
from taskomatic.states import HostState


def host(name: str, *, state: HostState = HostState.UP, vcpus: int = 8, memory_mib: int = 8192,
         used_vcpus: int = 0, used_memory_mib: int = 0) -> HostLoad:
    return HostLoad(name=name, state=state, vcpus=vcpus, memory_mib=memory_mib,
                    used_vcpus=used_vcpus, used_memory_mib=used_memory_mib)


def want(vcpus: int = 1, memory_mib: int = 512, *, host: str | None = None,
         exclude: tuple[str, ...] = (), field: str = "host") -> PlacementRequest:
    return PlacementRequest(vm="vm1", vcpus=vcpus, memory_mib=memory_mib, host=host,
                            exclude=exclude, field=field)


def refused(hosts: list[HostLoad], request: PlacementRequest, kind: ErrorType) -> ErrorInfo:
    with pytest.raises(ApplicationError) as caught:
        placement.choose(request, hosts)
    info = error_info(caught.value)
    assert info.type == kind
    assert info.vm == request.vm
    return info


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(HostState))
def test_in_service_passes_only_up_hosts(state: HostState) -> None:
    assert placement.in_service(host("a", state=state), want()) is (state == HostState.UP)


def test_not_excluded_refuses_the_excluded_hosts() -> None:
    request = want(exclude=("a", "b"))
    assert [placement.not_excluded(host(n), request) for n in "abc"] == [False, False, True]


@pytest.mark.parametrize(("vcpus", "memory_mib", "fits"), [
    (2, 1024, True),    # exactly the free room
    (3, 1024, False),   # one vCPU too many
    (2, 1025, False),   # one MiB too many
])
def test_has_room_counts_vms_and_reservations(vcpus: int, memory_mib: int, fits: bool) -> None:
    loaded = host("a", vcpus=8, memory_mib=4096, used_vcpus=6, used_memory_mib=3072)
    assert placement.has_room(loaded, want(vcpus, memory_mib)) is fits


def test_a_host_load_adds_vms_and_reservations() -> None:
    record = HostRecord(name="a", uri="test:///default", state=HostState.UP, vcpus=8,
                        memory_mib=4096, used_vcpus=2, used_memory_mib=1024, reserved_vcpus=1,
                        reserved_memory_mib=512, vm_count=2)
    load = HostLoad.of(record)
    assert (load.used_vcpus, load.used_memory_mib) == (3, 1536)
    assert (load.free_vcpus, load.free_memory_mib) == (5, 2560)
    assert load.taking(1, 512).free_memory_mib == 2048


# --- weighers ---------------------------------------------------------------------------------


def test_least_memory_used_ratio_wins_first() -> None:
    hosts = [host("a", memory_mib=4096, used_memory_mib=2048),     # 50 %
             host("b", memory_mib=16384, used_memory_mib=4096, used_vcpus=7)]  # 25 %, busy CPUs
    assert placement.choose(want(), hosts).name == "b"


def test_on_equal_memory_the_least_vcpu_used_ratio_wins() -> None:
    hosts = [host("a", used_memory_mib=2048, used_vcpus=4),
             host("b", used_memory_mib=2048, used_vcpus=2)]
    assert placement.choose(want(), hosts).name == "b"


def test_on_equal_load_the_host_name_decides_whatever_the_order() -> None:
    hosts = [host("c"), host("a"), host("b")]
    assert placement.choose(want(), hosts).name == "a"
    assert placement.choose(want(), hosts[::-1]).name == "a"


def test_the_weight_is_the_weighers_in_order() -> None:
    loaded = host("a", vcpus=8, memory_mib=4096, used_vcpus=2, used_memory_mib=1024)
    assert placement.weight(loaded) == (0.25, 0.25, "a")


def test_hosts_that_fail_a_filter_are_never_chosen() -> None:
    hosts = [host("down", state=HostState.DOWN), host("source"),
             host("full", used_vcpus=8), host("busy", used_memory_mib=6144)]
    assert placement.choose(want(exclude=("source",)), hosts).name == "busy"


# --- refusals, word for word ------------------------------------------------------------------


def test_a_pinned_unknown_host_is_unknown_on_the_field() -> None:
    info = refused([host("a")], want(host="nope", field="to"), ErrorType.UNKNOWN_HOST)
    assert (info.field, info.host, info.message) == ("to", "nope", "to: no host named 'nope'")


@pytest.mark.parametrize("state", [HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED,
                                   HostState.DOWN])
def test_a_pinned_host_out_of_service_is_not_available(state: HostState) -> None:
    info = refused([host("a", state=state)], want(host="a"), ErrorType.HOST_NOT_AVAILABLE)
    assert info.message == f"host: host 'a' is in state '{state.value}', not 'up'"


def test_a_pinned_excluded_host_is_not_available() -> None:
    info = refused([host("a")], want(host="a", exclude=("a",), field="to"),
                   ErrorType.HOST_NOT_AVAILABLE)
    assert info.message == ("to: host 'a' cannot take 'vm1' (it is the source or already "
                            "failed)")


def test_a_pinned_host_without_room_names_itself() -> None:
    info = refused([host("a", used_memory_mib=8000)], want(2, 512, host="a"),
                   ErrorType.NO_CAPACITY)
    assert (info.field, info.host) == ("host", "a")
    assert info.message == ("host: host 'a' lacks room for 2 vCPUs / 512 MiB (roomiest: a with"
                            " 8 vCPUs / 192 MiB free)")


def test_no_room_anywhere_names_the_roomiest_host() -> None:
    hosts = [host("a", used_memory_mib=8000), host("b", used_memory_mib=7900),
             host("c", used_vcpus=8), host("off", state=HostState.DOWN)]
    info = refused(hosts, want(1, 1024), ErrorType.NO_CAPACITY)
    assert (info.field, info.host) == ("memory_mib", None)
    assert info.message == ("memory_mib: no host in service lacks room for 1 vCPUs / 1024 MiB"
                            " (roomiest: c with 0 vCPUs / 8192 MiB free)")


def test_without_a_host_in_service_it_says_so() -> None:
    info = refused([host("a", state=HostState.MAINTENANCE)], want(), ErrorType.NO_CAPACITY)
    assert info.message == "host: no host is in service"


def test_with_every_other_host_excluded_it_lists_the_excluded() -> None:
    info = refused([host("a"), host("b", state=HostState.DOWN)],
                   want(exclude=("a", "x"), field="to"), ErrorType.NO_CAPACITY)
    assert info.message == "to: no other host is in service (excluded: a, x)"


# --- plan agrees with choose ------------------------------------------------------------------


def test_plan_places_each_vm_as_choose_would_counting_each_move() -> None:
    hosts = [host("src", used_memory_mib=6000, used_vcpus=6), host("a", memory_mib=4096),
             host("b", memory_mib=8192, used_memory_mib=2048), host("off", state=HostState.DOWN)]
    sizes = {f"v{i}": VmSize(1, 1024) for i in range(6)}
    planned = placement.plan("src", list(sizes), sizes, hosts)

    loads = {h.name: h for h in hosts}
    chosen: list[str] = []
    for vm, size in sizes.items():
        best = placement.choose(PlacementRequest(vm=vm, vcpus=size.vcpus,
                                                 memory_mib=size.memory_mib, exclude=("src",)),
                                list(loads.values()))
        loads[best.name] = best.taking(size.vcpus, size.memory_mib)
        chosen.append(best.name)
    assert [m.destination for m in planned] == chosen
    assert set(chosen) == {"a", "b"}  # the moves spread as the destinations fill


def test_plan_notes_vms_not_in_the_inventory_and_those_without_room() -> None:
    hosts = [host("src"), host("a", vcpus=2, memory_mib=2048)]
    sizes = {"small": VmSize(1, 1024), "huge": VmSize(1, 4096)}
    planned = placement.plan("src", ["ghost", "huge", "small"], sizes, hosts)
    assert planned == [
        PlannedMove(vm="ghost", destination=None, reason="not in the inventory"),
        PlannedMove(vm="huge", destination=None,
                    reason="no host in service has room for 1 vCPUs / 4096 MiB"),
        PlannedMove(vm="small", destination="a"),
    ]


def test_plan_never_sends_a_vm_back_to_the_host_being_cleared() -> None:
    planned = placement.plan("src", ["v"], {"v": VmSize(1, 64)}, [host("src")])
    assert planned == [PlannedMove(vm="v", destination=None,
                                   reason="no host in service has room for 1 vCPUs / 64 MiB")]
