"""Changing and deleting clusters on test-driver hosts, real PostgreSQL (and Temporal for the
CLI): new overcommit ratios change the capacity placement sees at once (its fast path's usage
counters included), a change that would leave a host with less than it uses is refused and
changes nothing, also against a placement in flight; only an empty cluster is deleted."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg2
import pytest
from cli_helpers import cli_on_stack, named_field, run_cli
from cluster_helpers import cluster, join
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.access import AccessAdmin
from starter.client import RequestError, TaskomaticClient
from taskomatic import inventory
from taskomatic.errors import ErrorType, error_info
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterChange, ClusterSpec, GrantSpec, ReserveCapacityInput
from taskomatic.settings import Settings


def _reserve(lab: Lab, label: str, vcpus: int, memory_mib: int, **where: Any
             ) -> ReserveCapacityInput:
    return ReserveCapacityInput(task_id=f"t-{lab.prefix}-{label}-{uuid.uuid4().hex[:4]}",
                                vm_name=lab.vm_name(label), vcpus=vcpus, memory_mib=memory_mib,
                                **where)


def _usage_totals(db: Database, hosts: list[str]) -> dict[str, tuple[float, float]]:
    """host → (vcpus_total, memory_total) of placement's usage counters (``host_usage``)."""
    with db.transaction() as cur:
        cur.execute("SELECT name, vcpus_total, memory_total FROM host_usage"
                    " WHERE name = ANY(%s)", (hosts,))
        return {r["name"]: (r["vcpus_total"], r["memory_total"]) for r in cur.fetchall()}


# --- cluster set --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_set_changes_the_capacity_and_the_weigher_placement_uses(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "set", vcpu_overcommit=1.0)
    one = await join(client, lab, 1, c, cpus=4, physical_mib=4096)
    two = await join(client, lab, 2, c, cpus=4, physical_mib=4096)
    fixed = await join(client, lab, 3, c, cpus=4, physical_mib=4096, vcpus=3, memory_mib=1024)
    big = _reserve(lab, "big", 6, 256, cluster=c)
    with pytest.raises(Exception) as full:  # 4 vCPUs per host: no room for 6
        inventory.reserve_capacity(db, big)
    assert error_info(full.value).type == ErrorType.NO_CAPACITY

    changed = await client.change_cluster(c, ClusterChange(vcpu_overcommit=2.0, weigher="pack"))
    assert changed is not None
    assert (changed.vcpu_overcommit, changed.memory_overcommit, changed.weigher,
            changed.hypervisor_type, changed.vcpus) == (2.0, 1.0, "pack", "test", 8 + 8 + 3)
    hosts = {h.name: h for h in await client.hosts()}
    assert [hosts[h.name].vcpus for h in (one, two, fixed)] == [8, 8, 3]  # explicit: kept
    assert _usage_totals(db, [one.name, two.name, fixed.name]) == {
        one.name: (8, 4096), two.name: (8, 4096), fixed.name: (3, 1024)}
    # The fast path places on the new capacity at once, by the new weigher (pack: the most
    # loaded host first, where spread would take the empty one).
    assert inventory.reserve_capacity(db, big).host == one.name
    assert inventory.reserve_capacity(db, _reserve(lab, "small", 1, 64, cluster=c)
                                      ).host == one.name
    unchanged = await client.change_cluster(c, ClusterChange())  # nothing given: nothing changes
    assert unchanged is not None and unchanged.model_dump() == (
        changed.model_dump() | {"used_vcpus": 7, "used_memory_mib": 320})
    assert await client.change_cluster(f"{c}-none", ClusterChange(weigher="spread")) is None


@pytest.mark.asyncio
async def test_set_is_refused_when_a_host_would_have_less_than_it_uses(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "tight", vcpu_overcommit=2.0, memory_overcommit=2.0)
    host = await join(client, lab, 1, c, cpus=4, physical_mib=2048)  # 8 vCPUs, 4096 MiB
    inventory.reserve_capacity(db, _reserve(lab, "held", 6, 3000, host=host.name))
    before = await client.cluster(c)
    cases = [(ClusterChange(vcpu_overcommit=1.0), "vcpu_overcommit",
              f"host {host.name!r} would have 4 vCPUs for 6 in use"),
             (ClusterChange(memory_overcommit=1.0, weigher="pack"), "memory_overcommit",
              f"host {host.name!r} would have 2048 MiB for 3000 in use")]
    for change, field, words in cases:
        with pytest.raises(RequestError) as refused:
            await client.change_cluster(c, change)
        assert refused.value.field == field and words in str(refused.value), refused.value
        assert await client.cluster(c) == before  # nothing changed, the weigher neither
        assert _usage_totals(db, [host.name]) == {host.name: (8, 4096)}
    exact = await client.change_cluster(c, ClusterChange(vcpu_overcommit=1.5))  # 6 for 6: fits
    assert exact is not None and (exact.vcpus, exact.used_vcpus) == (6, 6)


@pytest.mark.asyncio
async def test_set_waits_for_a_placement_in_flight_and_counts_it(
        client: TaskomaticClient, lab: Lab, db: Database, settings: Settings) -> None:
    c = cluster(db, lab, "race", vcpu_overcommit=2.0)
    host = await join(client, lab, 1, c, cpus=4, physical_mib=2048)  # 8 vCPUs
    # A placement that has locked the host and read its load (by the old ratio) but not yet
    # inserted its reservation: the change must wait for it, and then count what it placed.
    placing = psycopg2.connect(settings.database_url)
    outcome: list[BaseException | None] = []

    def change() -> None:
        try:
            inventory.change_cluster(db, c, ClusterChange(vcpu_overcommit=1.0))
            outcome.append(None)
        except BaseException as err:  # the refusal is the point
            outcome.append(err)

    try:
        with placing.cursor() as cur:
            cur.execute("SELECT id FROM hosts WHERE name = %s FOR UPDATE", (host.name,))
            host_id = cur.fetchone()[0]
            thread = threading.Thread(target=change)
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive() and not outcome  # it waits for the host's row
            cur.execute("INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib)"
                        " VALUES (%s, %s, %s, 6, 64)",
                        (f"t-{lab.prefix}-race", host_id, lab.vm_name("race")))
        placing.commit()
        thread.join(10)
    finally:
        placing.close()
    assert len(outcome) == 1 and outcome[0] is not None
    info = error_info(outcome[0])
    assert (info.type, info.field) == (ErrorType.INVALID_REQUEST, "vcpu_overcommit")
    assert "would have 4 vCPUs for 6 in use" in info.message
    shown = await client.cluster(c)
    assert shown is not None and (shown.vcpu_overcommit, shown.vcpus) == (2.0, 8)


# --- cluster delete -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_only_an_empty_cluster_is_deleted(client: TaskomaticClient, lab: Lab,
                                                db: Database) -> None:
    full = cluster(db, lab, "full")
    host = await join(client, lab, 1, full)
    empty = cluster(db, lab, "empty", weigher="pack")
    admin = AccessAdmin(db)
    grant, _ = admin.grant(GrantSpec(subject=f"s-{lab.prefix}", role="viewer",
                                     scope=f"cluster:{empty}"), granted_by="test")
    for name, words in ((full, f"still has hosts: {host.name}"),
                        ("default", "the default cluster 'default' is not deleted"),
                        (empty, f"grants of s-{lab.prefix}")):
        with pytest.raises(RequestError) as refused:
            await client.delete_cluster(name)
        assert refused.value.field == "name" and words in str(refused.value), refused.value
    assert await client.cluster(full) is not None and await client.cluster(empty) is not None
    admin.revoke_grant(grant.id)
    deleted = await client.delete_cluster(empty)
    assert deleted is not None and (deleted.name, deleted.weigher, deleted.hosts) == (
        empty, "pack", [])
    assert await client.cluster(empty) is None
    assert await client.delete_cluster(empty) is None  # gone: nothing to delete
    again, created = inventory.create_cluster(db, ClusterSpec(name=empty, hypervisor_type="test"))
    assert created and (again.name, again.weigher) == (empty, "spread")  # the name is free again


# --- the CLI --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cluster_cli_sets_and_deletes_and_refuses_by_field(
        monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment, settings: Settings,
        worker: Worker, client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "cli", vcpu_overcommit=2.0)
    host = await join(client, lab, 1, c, cpus=2, physical_mib=2048)  # 4 vCPUs
    inventory.reserve_capacity(db, _reserve(lab, "held", 3, 64, host=host.name))
    empty = cluster(db, lab, "gone")
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        code, err = await asyncio.to_thread(run_cli, ["cluster", "set", c, "--vcpu-overcommit",
                                                      "3", "--weigher", "pack", "--json"])
        assert code == 0, err
        shown = await client.cluster(c)
        assert shown is not None and (shown.vcpus, shown.weigher) == (6, "pack")
        for argv, field, words in (
                (["cluster", "set", c, "--vcpu-overcommit", "1"], "vcpu_overcommit",
                 "would have 2 vCPUs for 3 in use"),
                (["cluster", "set", c, "--memory-overcommit", "0"], "memory_overcommit", ""),
                (["cluster", "set", f"{c}-none", "--weigher", "spread"], "name",
                 "no cluster named"),
                (["cluster", "delete", c], "name", f"still has hosts: {host.name}"),
                (["cluster", "delete", "default"], "name", "is not deleted"),
                (["cluster", "delete", f"{c}-none"], "name", "no cluster named")):
            code, err = await asyncio.to_thread(run_cli, argv)
            assert (code, named_field(err)) == (2, field) and words in err, (argv, err)
        assert await asyncio.to_thread(run_cli, ["cluster", "delete", empty]) == (0, "")
    assert await client.cluster(empty) is None
    shown = await client.cluster(c)
    assert shown is not None and (shown.vcpus, shown.vcpu_overcommit) == (6, 3.0)
