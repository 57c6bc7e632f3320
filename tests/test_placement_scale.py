"""Placement at scale on real PostgreSQL: the fast path (pre-selection by the usage counters,
one host row locked) picks what ``placement.choose`` picks over the exact loads, the counters
stay the sum of VMs and reservations, concurrent placements never overcommit, and the
benchmark's quick mode runs."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.exceptions import ApplicationError

from bench import placement as bench_placement
from conftest import Lab
from starter.dev.parts import write_test_host
from taskomatic import inventory, placement
from taskomatic.errors import ErrorType, error_info
from taskomatic.inventory.db import Database
from taskomatic.inventory.hosts import read_hosts
from taskomatic.inventory.placement import reserve_fast
from taskomatic.models import (
    ClusterSpec,
    HostFacts,
    HostSpec,
    RecordVmInput,
    ReserveCapacityInput,
    VmState,
)


def make_cluster(db: Database, lab: Lab, weigher: str, capacities: list[tuple[int, int]]
                 ) -> tuple[str, list[str]]:
    name = f"c{lab.prefix}-{weigher}"
    inventory.create_cluster(db, ClusterSpec(name=name, hypervisor_type="test",
                                             weigher=weigher))
    hosts = []
    for i, (vcpus, memory_mib) in enumerate(capacities):
        host = f"h{lab.prefix}-{weigher}{i}"
        spec = HostSpec(name=host, uri=write_test_host(lab.dir, host, 1, 1024), cluster=name,
                        vcpus=vcpus, memory_mib=memory_mib)
        inventory.add_host(db, spec)
        lab.hosts.append(spec)
        hosts.append(host)
    return name, hosts


def reserve(db: Database, cluster: str | None, vcpus: int = 1, memory_mib: int = 256,
            host: str | None = None) -> str:
    tag = uuid.uuid4().hex[:8]
    return inventory.reserve_capacity(db, ReserveCapacityInput(
        task_id=f"t-{tag}", vm_name=f"v-{tag}", vcpus=vcpus, memory_mib=memory_mib,
        cluster=cluster, host=host)).host


def usage_matches_the_sums(db: Database, hosts: list[str]) -> None:
    """The counters of ``host_usage`` are the hosts' capacity and the sums of their rows."""
    with db.transaction() as cur:
        cur.execute("SELECT h.name, u.vcpus, u.memory_mib, u.vcpus_total, u.memory_total"
                    " FROM hosts h JOIN host_usage u ON u.host_id = h.id WHERE h.name = ANY(%s)",
                    (hosts,))
        counters = {r["name"]: tuple(r.values())[1:] for r in cur.fetchall()}
    sums = {h.name: (h.used_vcpus + h.reserved_vcpus, h.used_memory_mib + h.reserved_memory_mib,
                     h.vcpus, h.memory_mib)
            for h in inventory.list_hosts(db) if h.name in hosts}
    assert counters == sums


@pytest.mark.parametrize("weigher", ["spread", "pack"])
def test_the_fast_path_picks_what_choose_picks(lab: Lab, db: Database, weigher: str) -> None:
    cluster, hosts = make_cluster(db, lab, weigher, [(8, 4096), (16, 8192), (4, 2048),
                                                     (8, 8192)])
    for pinned, vcpus, memory in ((hosts[0], 2, 1024), (hosts[1], 1, 4096), (hosts[3], 4, 512)):
        reserve(db, cluster, vcpus, memory, host=pinned)
    for _ in range(12):
        with db.transaction() as cur:
            loads = [placement.HostLoad.of(h) for h in read_hosts(cur, cluster=cluster)]
        expected = placement.choose(placement.PlacementRequest(
            vm="x", vcpus=1, memory_mib=256, cluster=cluster, weigher=weigher),  # type: ignore[arg-type]
            loads).name
        assert reserve(db, cluster) == expected
    usage_matches_the_sums(db, hosts)


@pytest.mark.parametrize("weigher", ["spread", "pack"])
def test_the_one_call_placement_agrees_with_the_filters(lab: Lab, db: Database,
                                                        weigher: str) -> None:
    """Over random capacities, loads, host states, sizes and exclusions, the SQL one-call
    placement (``reserve_fast``) places exactly where ``placement.best`` says over the exact
    loads, and places nothing when no host passes every filter."""
    rng = random.Random(f"{lab.prefix}-{weigher}")
    cluster, hosts = make_cluster(db, lab, weigher, [
        (rng.choice((4, 8, 16)), rng.choice((2048, 4096, 8192))) for _ in range(6)])
    with db.transaction() as cur:
        cur.execute("UPDATE hosts SET state = 'maintenance' WHERE name = %s", (hosts[5],))
    for pinned in rng.sample(hosts[:5], 3):
        reserve(db, cluster, rng.randint(1, 3), rng.choice((256, 1024)), host=pinned)
    outcomes = set()
    for i in range(40):
        request = placement.PlacementRequest(
            vm=lab.vm_name(f"one{weigher}{i}"), vcpus=rng.randint(1, 6),
            memory_mib=rng.choice((64, 512, 2048, 4096)), cluster=cluster,
            exclude=tuple(rng.sample(hosts, rng.randint(0, 2))), hypervisor_type="test",
            weigher=weigher)  # type: ignore[arg-type]
        with db.transaction() as cur:
            exact = [placement.HostLoad.of(h) for h in read_hosts(cur, cluster=cluster)]
        expected = placement.best(request, exact)
        with db.transaction() as cur:
            found = reserve_fast(cur, task_id=f"t-{request.vm}", vm=request.vm,
                                 vcpus=request.vcpus, memory_mib=request.memory_mib,
                                 cluster=cluster, exclude=request.exclude,
                                 check=lambda _found, asked=request: asked)
        assert (found.host.name if found else None) == (expected.name if expected else None)
        outcomes.add(found is not None)
    assert outcomes == {True, False}  # both kinds of answer were checked
    usage_matches_the_sums(db, hosts)


def test_the_usage_counters_follow_records_moves_and_removals(lab: Lab, db: Database) -> None:
    _, hosts = make_cluster(db, lab, "spread", [(8, 4096), (8, 4096)])
    res = inventory.reserve_capacity(db, ReserveCapacityInput(
        task_id=f"t-{lab.prefix}", vm_name=lab.vm_name("u"), vcpus=2, memory_mib=512,
        host=hosts[0]))
    usage_matches_the_sums(db, hosts)
    inventory.record_vm(db, RecordVmInput(task_id=res.task_id, name=res.vm_name,
                                          uuid=str(uuid.uuid4()), host=hosts[0], vcpus=2,
                                          memory_mib=512, state=VmState.SHUTOFF))
    usage_matches_the_sums(db, hosts)
    with db.transaction() as cur:  # as a recorded move does
        cur.execute("UPDATE vms SET host_id = (SELECT id FROM hosts WHERE name = %s)"
                    " WHERE name = %s", (hosts[1], res.vm_name))
    usage_matches_the_sums(db, hosts)
    assert inventory.remove_vm(db, res.vm_name)
    usage_matches_the_sums(db, hosts)


def test_concurrent_placements_never_overcommit(lab: Lab, db: Database) -> None:
    cluster, hosts = make_cluster(db, lab, "spread", [(8, 65536)] * 3)

    def one(_: int) -> str | None:
        try:
            return reserve(db, cluster, vcpus=1, memory_mib=64)
        except ApplicationError as err:
            assert error_info(err).type is ErrorType.NO_CAPACITY
            return None

    with ThreadPoolExecutor(16) as pool:
        placed = [h for h in pool.map(one, range(60)) if h is not None]
    assert sorted(placed) == sorted(hosts * 8)  # 24 placed, 8 per host, the rest refused
    usage_matches_the_sums(db, hosts)


def test_the_placement_benchmark_quick_mode_runs(pg_server_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_placement.main(["--quick", "--hosts", "10", "50", "--placements", "60",
                                 "--threads", "8", "--pg-url", pg_server_url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "'overcommitted_hosts': 0" in out and "'placed': 160" in out


def test_the_counters_follow_a_change_of_the_overcommit(lab: Lab, db: Database) -> None:
    name = f"c{lab.prefix}-oc"
    inventory.create_cluster(db, ClusterSpec(name=name, hypervisor_type="test"))
    host = f"h{lab.prefix}-oc"
    spec = HostSpec(name=host, uri=write_test_host(lab.dir, host, 1, 1024), cluster=name)
    inventory.add_host(db, spec, HostFacts(hypervisor_type="test", cpus=3, memory_mib=1000))
    lab.hosts.append(spec)
    usage_matches_the_sums(db, [host])
    with db.transaction() as cur:
        cur.execute("UPDATE clusters SET vcpu_overcommit = 2.5, memory_overcommit = 1.5"
                    " WHERE name = %s", (name,))
    record = inventory.get_host(db, host)
    assert record is not None and (record.vcpus, record.memory_mib) == (7, 1500)
    usage_matches_the_sums(db, [host])
