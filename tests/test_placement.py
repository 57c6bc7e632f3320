"""Placement as pure functions: each filter, the weighers' order, the errors ``choose`` raises,
and ``plan`` agreeing with ``choose``. No database, no Temporal."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from taskomatic import placement
from taskomatic.errors import ErrorInfo, ErrorType, error_info
from taskomatic.models import HostRecord, PlannedMove
from taskomatic.placement import HostLoad, PlacementRequest, VmSize
from taskomatic.states import HostState


def host(name: str, *, state: HostState = HostState.UP, vcpus: int = 8, memory_mib: int = 8192,
         used_vcpus: int = 0, used_memory_mib: int = 0, cluster: str = "default",
         kind: str = "test", pools: frozenset[str] = frozenset(),
         groups: frozenset[str] = frozenset()) -> HostLoad:
    return HostLoad(name=name, state=state, vcpus=vcpus, memory_mib=memory_mib,
                    used_vcpus=used_vcpus, used_memory_mib=used_memory_mib, cluster=cluster,
                    hypervisor_type=kind, pools=pools, groups=groups)


def want(vcpus: int = 1, memory_mib: int = 512, *, host: str | None = None,
         exclude: tuple[str, ...] = (), field: str = "host", **more: Any) -> PlacementRequest:
    return PlacementRequest(vm="vm1", vcpus=vcpus, memory_mib=memory_mib, host=host,
                            exclude=exclude, field=field, **more)


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
    reason = placement.in_service(host("a", state=state), want())
    assert reason == (None if state == HostState.UP else f"is in state {state.value!r}, not 'up'")


def test_not_excluded_refuses_the_excluded_hosts() -> None:
    request = want(exclude=("a", "b"))
    assert [placement.not_excluded(host(n), request) is None for n in "abc"] == [False, False,
                                                                               True]


@pytest.mark.parametrize(("vcpus", "memory_mib", "fits"), [
    (2, 1024, True),    # exactly the free room
    (3, 1024, False),   # one vCPU too many
    (2, 1025, False),   # one MiB too many
])
def test_has_room_counts_vms_and_reservations(vcpus: int, memory_mib: int, fits: bool) -> None:
    loaded = host("a", vcpus=8, memory_mib=4096, used_vcpus=6, used_memory_mib=3072)
    reason = placement.has_room(loaded, want(vcpus, memory_mib))
    assert reason == (None if fits else "lacks room (2 vCPUs / 1024 MiB free)")


def test_same_cluster_keeps_a_request_in_its_cluster() -> None:
    assert placement.same_cluster(host("a", cluster="c1"), want(cluster="c1")) is None
    assert placement.same_cluster(host("a", cluster="c2"), want()) is None  # any cluster
    assert placement.same_cluster(host("a", cluster="c2"), want(cluster="c1")) == (
        "is in cluster 'c2', not 'c1'")


def test_same_hypervisor_refuses_another_driver() -> None:
    assert placement.same_hypervisor(host("a", kind="test"), want(hypervisor_type="test")) is None
    assert placement.same_hypervisor(host("a", kind="qemu"), want()) is None
    assert placement.same_hypervisor(host("a", kind="qemu"), want(hypervisor_type="test")) == (
        "is a 'qemu' hypervisor, not 'test'")


def test_sees_pools_needs_every_pool_of_the_disks() -> None:
    sees = host("host-2", pools=frozenset({"images", "iso"}))
    assert placement.sees_pools(sees, want(pools=frozenset())) is None
    assert placement.sees_pools(sees, want(pools=frozenset({"images", "iso"}))) is None
    assert placement.sees_pools(sees, want(pools=frozenset({"images", "a", "b"}))) == (
        "does not see pool a, b")
    info = refused([host("host-2")], want(pools=frozenset({"images"})), ErrorType.NO_CAPACITY)
    assert "host-2: does not see pool images (sees_pools)" in info.message


def test_hard_anti_affinity_never_shares_a_host() -> None:
    hosts = [host("a", groups=frozenset({"g"})), host("b", used_memory_mib=4096)]
    request = want(group="g", group_policy="anti-affinity")
    assert placement.affinity(hosts[0], request) == "holds a VM of anti-affinity group 'g'"
    assert placement.choose(request, hosts).name == "b"  # though a is less loaded
    info = refused(hosts[:1], request, ErrorType.NO_CAPACITY)
    assert "a: holds a VM of anti-affinity group 'g' (affinity)" in info.message


def test_soft_anti_affinity_prefers_but_does_not_require_another_host() -> None:
    request = want(group="g", group_policy="soft-anti-affinity")
    hosts = [host("a", groups=frozenset({"g"})), host("b", used_memory_mib=4096)]
    assert placement.affinity(hosts[0], request) is None
    assert placement.choose(request, hosts).name == "b"
    assert placement.choose(request, hosts[:1]).name == "a"


def test_affinity_keeps_a_group_together_once_it_has_a_member() -> None:
    request = want(group="g", group_policy="affinity")
    empty = [host("a"), host("b", used_memory_mib=4096)]
    assert placement.choose(request, empty).name == "a"  # the first member goes anywhere
    together = [host("a"), host("b", used_memory_mib=4096, groups=frozenset({"g"}))]
    assert placement.choose(request, together).name == "b"
    full = [host("a"), host("b", used_memory_mib=8192, groups=frozenset({"g"}))]
    info = refused(full, request, ErrorType.NO_CAPACITY)
    assert "a: holds no VM of affinity group 'g' (affinity)" in info.message


def test_a_planned_move_counts_its_group_for_the_next() -> None:
    hosts = [host("src"), host("a"), host("b", used_memory_mib=4096)]
    sizes = {"v1": VmSize(1, 64), "v2": VmSize(1, 64), "v3": VmSize(1, 64)}
    planned = placement.plan(moves("src", sizes, group="g"), hosts)
    assert [m.destination for m in planned] == ["a", "b", None]
    assert planned[2].reason is not None and "(affinity)" in planned[2].reason


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


def test_pack_prefers_the_most_loaded_host_that_fits() -> None:
    hosts = [host("a", used_memory_mib=1024), host("b", used_memory_mib=4096),
             host("c", used_memory_mib=8000)]
    assert placement.choose(want(weigher="pack"), hosts).name == "b"  # c lacks room
    assert placement.choose(want(weigher="spread"), hosts).name == "a"


def test_on_equal_load_the_host_name_decides_whatever_the_order() -> None:
    hosts = [host("c"), host("a"), host("b")]
    assert placement.choose(want(), hosts).name == "a"
    assert placement.choose(want(), hosts[::-1]).name == "a"


def test_the_weight_is_the_weighers_in_order() -> None:
    loaded = host("a", vcpus=8, memory_mib=4096, used_vcpus=2, used_memory_mib=1024)
    assert placement.weight(loaded) == (0, 0.25, 0.25, "a")
    assert placement.weight(loaded, want(weigher="pack")) == (0, -0.25, -0.25, "a")


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


def test_a_pinned_host_of_another_cluster_is_not_available() -> None:
    info = refused([host("a", cluster="c2")], want(host="a", cluster="c1", field="to"),
                   ErrorType.HOST_NOT_AVAILABLE)
    assert info.message == "to: host 'a' is in cluster 'c2', not 'c1'"


def test_a_pinned_excluded_host_is_not_available() -> None:
    info = refused([host("a")], want(host="a", exclude=("a",), field="to"),
                   ErrorType.HOST_NOT_AVAILABLE)
    assert info.message == ("to: host 'a' cannot take 'vm1' (it is the source or already "
                            "failed)")


def test_a_pinned_host_without_room_names_itself() -> None:
    info = refused([host("a", used_memory_mib=8000)], want(2, 512, host="a"),
                   ErrorType.NO_CAPACITY)
    assert (info.field, info.host) == ("host", "a")
    assert info.message == ("host: host 'a' lacks room for 2 vCPUs / 512 MiB (8 vCPUs / 192 MiB"
                            " free)")


def test_no_room_anywhere_names_each_host_and_why() -> None:
    hosts = [host("a", used_memory_mib=8000), host("b", used_memory_mib=7900),
             host("c", used_vcpus=8), host("off", state=HostState.DOWN)]
    info = refused(hosts, want(1, 1024), ErrorType.NO_CAPACITY)
    assert (info.field, info.host) == ("memory_mib", None)
    assert info.message == (
        "memory_mib: no host can take 'vm1' (1 vCPUs / 1024 MiB): a: lacks room (8 vCPUs /"
        " 192 MiB free) (has_room); b: lacks room (8 vCPUs / 292 MiB free) (has_room); c: lacks"
        " room (0 vCPUs / 8192 MiB free) (has_room); off: is in state 'down', not 'up'"
        " (in_service)")


def test_without_a_host_in_service_it_says_so() -> None:
    info = refused([host("a", state=HostState.MAINTENANCE)], want(), ErrorType.NO_CAPACITY)
    assert info.message == ("host: no host can take 'vm1' (1 vCPUs / 512 MiB): a: is in state"
                            " 'maintenance', not 'up' (in_service)")


def test_with_every_other_host_excluded_it_names_the_excluded() -> None:
    info = refused([host("a"), host("b", state=HostState.DOWN)],
                   want(exclude=("a", "x"), field="to"), ErrorType.NO_CAPACITY)
    assert info.message == ("to: no host can take 'vm1' (1 vCPUs / 512 MiB): a: cannot take"
                            " 'vm1' (it is the source or already failed) (not_excluded); b: is in"
                            " state 'down', not 'up' (in_service)")


def test_no_host_at_all() -> None:
    assert refused([], want(), ErrorType.NO_CAPACITY).message == (
        "host: no host can take 'vm1' (1 vCPUs / 512 MiB): there is no host")


def test_an_explanation_names_ten_hosts_and_counts_the_rest() -> None:
    hosts = [host(f"h{i:02}", state=HostState.DOWN) for i in range(12)]
    hosts += [host(f"x{i}", cluster="other") for i in range(3)]
    text = placement.explain(want(cluster="default"), hosts)
    assert text.count(": is in state 'down'") == 10
    assert text.endswith("; 2 more (in_service); 3 hosts of other clusters")
    assert placement.explain(want(cluster="empty"), hosts) == (
        "cluster 'empty' has no host (15 hosts of other clusters)")


# --- plan agrees with choose ------------------------------------------------------------------


def moves(source: str, sizes: dict[str, VmSize], order: list[str] | None = None, **more: Any
          ) -> list[tuple[str, PlacementRequest | None]]:
    return [(vm, PlacementRequest(vm=vm, vcpus=sizes[vm].vcpus, memory_mib=sizes[vm].memory_mib,
                                  exclude=(source,), **more)) for vm in order or list(sizes)]


def test_plan_places_each_vm_as_choose_would_counting_each_move() -> None:
    hosts = [host("src", used_memory_mib=6000, used_vcpus=6), host("a", memory_mib=4096),
             host("b", memory_mib=8192, used_memory_mib=2048), host("off", state=HostState.DOWN)]
    sizes = {f"v{i}": VmSize(1, 1024) for i in range(6)}
    planned = placement.plan(moves("src", sizes), hosts)

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
    planned = placement.plan([("ghost", None), *moves("src", sizes, ["huge", "small"])], hosts)
    assert planned == [
        PlannedMove(vm="ghost", destination=None, reason="not in the inventory"),
        PlannedMove(vm="huge", destination=None,
                    reason="no host can take it: a: lacks room (2 vCPUs / 2048 MiB free)"
                           " (has_room); src: cannot take 'huge' (it is the source or already"
                           " failed) (not_excluded)"),
        PlannedMove(vm="small", destination="a"),
    ]


def test_plan_never_sends_a_vm_back_to_the_host_being_cleared() -> None:
    planned = placement.plan(moves("src", {"v": VmSize(1, 64)}), [host("src")])
    assert planned == [PlannedMove(vm="v", destination=None,
                                   reason="no host can take it: src: cannot take 'v' (it is the"
                                          " source or already failed) (not_excluded)")]
