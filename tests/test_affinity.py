"""Affinity groups on libvirt test-driver hosts, real Temporal and PostgreSQL: hard
anti-affinity never violated under many concurrent creates, soft anti-affinity spreads, affinity
keeps a group together, and the clear-host dry run respects the groups."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from cluster_helpers import cluster, join

from conftest import Lab
from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.errors import ErrorType
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest, HostSpec

pytestmark = pytest.mark.asyncio


async def create_many(client: TaskomaticClient, lab: Lab, c: str, group: str, policy: str,
                      n: int) -> list[BaseException | None]:
    """``n`` creates of one group submitted at once; each one's error, or None."""
    async def one(i: int) -> BaseException | None:
        req = CreateVmRequest(name=lab.vm_name(f"{group}-{i}"), cluster=c, group=group,
                              group_policy=policy, memory_mib=64)
        try:
            await (await client.create_vm(req)).result()
        except TaskError as err:
            return err
        return None
    return list(await asyncio.gather(*(one(i) for i in range(n))))


def members(lab: Lab, hosts: list[HostSpec], group: str) -> dict[str, int]:
    """host → how many domains of ``group`` libvirt has there."""
    prefix = lab.vm_name(f"{group}-")
    return {h.name: sum(1 for d in lab.domains(h) if d.startswith(prefix)) for h in hosts}


async def test_anti_affinity_is_never_violated_by_concurrent_creates(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "anti")
    hosts = [await join(client, lab, i, c, vcpus=64, memory_mib=65536) for i in range(3)]
    group = f"g{lab.prefix}"
    outcomes = await create_many(client, lab, c, group, "anti-affinity", 12)
    failed = [e for e in outcomes if e is not None]
    assert len(failed) == 9
    assert {e.failure.error_type for e in failed if isinstance(e, TaskError)} == {
        ErrorType.NO_CAPACITY.value}
    assert all("holds a VM of anti-affinity group" in str(e) for e in failed)
    assert members(lab, hosts, group) == {h.name: 1 for h in hosts}
    recorded = Counter(v.host for v in inventory.list_vms(db) if v.group == group)
    assert recorded == Counter({h.name: 1 for h in hosts})
    with pytest.raises(RequestError) as other_policy:  # the group keeps its rule
        await client.create_vm(CreateVmRequest(name=lab.vm_name("x"), group=group,
                                               group_policy="affinity"))
    assert other_policy.value.field == "group_policy"
    # Clearing one host has nowhere to send its member: every other host holds one.
    source = hosts[0].name
    vm = next(v.name for v in inventory.list_vms(db, source) if v.group == group)
    [move] = inventory.plan_moves(db, source, [vm])
    assert move.destination is None and move.reason is not None
    assert "holds a VM of anti-affinity group" in move.reason and "(affinity)" in move.reason
    spare = await join(client, lab, 3, c, vcpus=64, memory_mib=65536)
    assert inventory.plan_moves(db, source, [vm])[0].destination == spare.name


async def test_soft_anti_affinity_spreads_and_affinity_gathers(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "soft")
    hosts = [await join(client, lab, i, c, vcpus=64, memory_mib=65536) for i in range(3)]
    soft, together = f"s{lab.prefix}", f"t{lab.prefix}"
    assert await create_many(client, lab, c, soft, "soft-anti-affinity", 6) == [None] * 6
    assert sorted(members(lab, hosts, soft).values()) == [2, 2, 2]
    assert await create_many(client, lab, c, together, "affinity", 5) == [None] * 5
    assert sorted(members(lab, hosts, together).values()) == [0, 0, 5]
