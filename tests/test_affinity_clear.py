"""Affinity groups against clear-host and restore, on libvirt test-driver hosts with real Temporal
and PostgreSQL: hard anti-affinity holds under 200 concurrent creates racing a clear-host, and
clear-host then restore keep both anti-affinity and affinity (a VM that cannot go back is
reported with the affinity reason). Every check reads libvirt, then the inventory."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from cluster_helpers import cluster, join
from test_clear_host import placement
from test_migration import reservations

from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from taskomatic.errors import ErrorType
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ActivateHostRequest,
    ClearHostRequest,
    CreateVmRequest,
    HostSpec,
    HostState,
    RestoreHostRequest,
)

pytestmark = pytest.mark.asyncio

ANTI = "holds a VM of anti-affinity group"


def group_hosts(lab: Lab, db: Database, group: str) -> dict[str, list[str]]:
    """VM of ``group`` (named ``vm-<prefix>-<group>-…``) → hosts libvirt has it on (checked
    against the inventory by ``placement``)."""
    prefix = lab.vm_name(f"{group}-")
    return {vm: hosts for vm, hosts in placement(lab, db).items() if vm.startswith(prefix)}


async def create(client: TaskomaticClient, lab: Lab, c: str, group: str, i: int,
                 policy: str = "anti-affinity", host: HostSpec | None = None
                 ) -> BaseException | None:
    req = CreateVmRequest(name=lab.vm_name(f"{group}-{i}"), cluster=c, group=group,
                          group_policy=policy, memory_mib=64,
                          host=host.name if host else None)
    try:
        await (await client.create_vm(req)).result()
    except TaskError as err:
        return err
    return None


async def test_anti_affinity_holds_under_200_creates_and_a_clear_host(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    """20 hard anti-affinity groups, one member of each on the host being cleared; 180 more
    creates race the clear over 7 other hosts: 10 roomy groups (7 members: each fits, the clear
    must move theirs) and 10 crowded ones (13 members: 6 are refused)."""
    c = cluster(db, lab, "race")
    hosts = [await join(client, lab, i, c, vcpus=256, memory_mib=65536) for i in range(8)]
    src, others = hosts[0], {h.name for h in hosts[1:]}
    roomy = [f"r{lab.prefix}x{g}" for g in range(10)]
    crowded = [f"c{lab.prefix}x{g}" for g in range(10)]
    size = {g: len(others) for g in roomy} | {g: len(others) + 6 for g in crowded}
    first = await asyncio.gather(*(create(client, lab, c, g, 0, host=src) for g in size))
    assert first == [None] * 20
    clear = await client.clear_host(ClearHostRequest(host=src.name, parallel=4))
    keys = [(g, i) for g in size for i in range(1, size[g])]
    racing = await asyncio.gather(*(create(client, lab, c, g, i) for g, i in keys))
    assert len(first) + len(racing) == 200
    result = await client.host_result(clear)
    refused = Counter(g for (g, _), err in zip(keys, racing, strict=True) if err is not None)
    assert not set(refused) & set(roomy), f"a roomy group's create was refused: {refused}"
    for err in racing:
        if err is not None:
            assert isinstance(err, TaskError), err
            assert err.failure.error_type == ErrorType.NO_CAPACITY.value, err
            assert ANTI in str(err) and "(affinity)" in str(err), err
    for outcome in result.failed:  # a crowded group's member may find every host taken
        assert outcome.vm.startswith(lab.vm_name("c")), outcome
        assert outcome.reason is not None and ANTI in outcome.reason, outcome
    assert result.state == (HostState.MAINTENANCE_FAILED if result.failed
                            else HostState.MAINTENANCE)
    held = {o.vm for o in result.failed}
    for g in size:  # libvirt's view, checked against the inventory by placement()
        where = group_hosts(lab, db, g)
        assert len(where) == size[g] - refused[g], f"{g}: VMs lost or made twice"
        per_host = Counter(h for hs in where.values() for h in hs)
        assert max(per_host.values()) == 1, f"{g} shares a host: {per_host}"
        if g in roomy:  # the clear moved every member off the host
            assert set(per_host) == others, f"{g} is on {sorted(per_host)}"
        else:  # a create is refused only when every host in service holds a member
            assert set(per_host) >= others, sorted(per_host)
            assert src.name not in per_host or held & set(where), f"{g} left on {src.name}"
    assert reservations(db, lab.vm_name("")) == []


async def test_clear_host_and_restore_keep_affinity_and_anti_affinity(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    c = cluster(db, lab, "back")
    a, b, spare = [await join(client, lab, i, c, vcpus=64, memory_mib=65536) for i in range(3)]
    anti, together = f"a{lab.prefix}", f"t{lab.prefix}"
    assert await create(client, lab, c, anti, 1, host=a) is None
    assert await create(client, lab, c, anti, 2, host=b) is None
    for i in range(3):
        assert await create(client, lab, c, together, i, policy="affinity", host=a) is None
    cleared = await client.host_result(await client.clear_host(ClearHostRequest(
        host=a.name, parallel=4)))
    assert cleared.state == HostState.MAINTENANCE and cleared.failed == []
    # The anti-affinity member could only go to the spare host; the affinity group kept together.
    assert group_hosts(lab, db, anti) == {lab.vm_name(f"{anti}-1"): [spare.name],
                                          lab.vm_name(f"{anti}-2"): [b.name]}
    assert len({h for hs in group_hosts(lab, db, together).values() for h in hs}) == 1
    activated = await client.host_result(await client.activate_host(ActivateHostRequest(
        host=a.name)))
    assert activated.state == HostState.UP
    # While the host is back, a new member of the anti-affinity group can only land on it...
    assert await create(client, lab, c, anti, 3) is None
    assert group_hosts(lab, db, anti)[lab.vm_name(f"{anti}-3")] == [a.name]
    restored = await client.host_result(await client.restore_host(RestoreHostRequest(
        host=a.name, parallel=4)))
    # ...so the member that came from it cannot go back, and says why; the group comes home.
    outcomes = {o.vm: o for o in restored.outcomes}
    held = outcomes[lab.vm_name(f"{anti}-1")]
    assert held.outcome == "failed" and held.reason is not None and ANTI in held.reason, held
    assert [outcomes[lab.vm_name(f"{together}-{i}")].outcome for i in range(3)] == ["moved"] * 3
    assert group_hosts(lab, db, anti) == {lab.vm_name(f"{anti}-1"): [spare.name],
                                          lab.vm_name(f"{anti}-2"): [b.name],
                                          lab.vm_name(f"{anti}-3"): [a.name]}
    assert list(group_hosts(lab, db, together).values()) == [[a.name]] * 3
    assert reservations(db, lab.vm_name("")) == []
