"""A mixed inventory: test-driver hosts registered beside the lab's real libvirtd + QEMU hosts.
Nothing ever moves between them: a migrate and a clear-host dry run of a test-driver VM never pick
a QEMU host (even when they are the only hosts with room), and the reverse for a lab VM. What
libvirt has on each host is checked, not only the inventory."""

from __future__ import annotations

import pytest
from helpers import force_host_state
from lab_fixtures import QemuLab

from conftest import Lab
from lab.models import LabHost
from starter.client import RequestError, TaskError, TaskomaticClient
from taskomatic import inventory
from taskomatic.errors import ErrorType
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreateVmRequest,
    HostState,
    MigrateVmRequest,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]


async def dry_run(client: TaskomaticClient, host: str) -> dict[str, tuple[str | None, str]]:
    """VM → (planned destination, reason) of a clear-host dry run of ``host``."""
    result = await client.host_result(await client.clear_host(ClearHostRequest(
        host=host, dry_run=True)))
    assert result.dry_run and result.state == HostState.UP
    return {m.vm: (m.destination, m.reason or "") for m in result.plan}


async def test_nothing_moves_between_test_driver_and_qemu_hosts(
        client: TaskomaticClient, qemu_lab: QemuLab, lab: Lab, db: Database) -> None:
    q1, q2, q3 = qemu_lab.hosts
    t1, t2 = lab.host(1, vcpus=512, memory_mib=1 << 20), lab.host(2, vcpus=512,
                                                                   memory_mib=1 << 20)
    kinds = {h.name: h.hypervisor_type for h in inventory.list_hosts(db)}
    assert {kinds[t1.name], kinds[t2.name], kinds[q1.name]} == {"test", "qemu"}
    test_vm, lab_vm = lab.vm_name("t"), qemu_lab.vm_name("q")
    await (await client.create_vm(CreateVmRequest(name=test_vm, host=t1.name, memory_mib=64,
                                                  start=True))).result()
    await (await client.create_vm(CreateVmRequest(name=lab_vm, host=q1.name, memory_mib=64,
                                                  start=True))).result()

    # Each VM's plan and move stay with its own kind of host, though the others are up.
    assert (await dry_run(client, t1.name))[test_vm][0] == t2.name
    assert (await dry_run(client, q1.name))[lab_vm][0] in {q2.name, q3.name}
    moved = await (await client.migrate_vm(MigrateVmRequest(name=lab_vm))).result()
    assert moved.host in {q2.name, q3.name}
    assert qemu_lab.domains(inventory_host(db, lab_vm, qemu_lab)) == {lab_vm: True}
    assert (await (await client.migrate_vm(MigrateVmRequest(name=test_vm))).result()
            ).host == t2.name
    assert lab.domains(t1) == {} and lab.domains(t2) == {test_vm: True}

    # With no other host of its kind in service, nothing is left: the roomy others are no option.
    lab_home = inventory_host(db, lab_vm, qemu_lab)
    others = [q for q in qemu_lab.hosts if q is not lab_home]
    for vm, home, away in ((test_vm, t2.name, [t1.name]),
                           (lab_vm, lab_home.name, [q.name for q in others])):
        for name in away:
            force_host_state(db, name, HostState.DOWN)
        destination, reason = (await dry_run(client, home))[vm]
        assert destination is None, (vm, destination)
        assert "hosts of other clusters" in reason, reason
        other_kind = {h.name for h in (t1, t2, q1, q2, q3)} - {home, *away}
        assert not other_kind & set(reason.replace(":", " ").split()), reason
        with pytest.raises(TaskError) as refused:
            await (await client.migrate_vm(MigrateVmRequest(name=vm))).result()
        assert refused.value.failure.error_type == ErrorType.NO_CAPACITY.value
        for name in away:
            force_host_state(db, name, HostState.UP)
    # Nothing moved: libvirt still has each VM where it was.
    assert lab.domains(t1) == {} and lab.domains(t2) == {test_vm: True}
    assert qemu_lab.domains(lab_home) == {lab_vm: True}
    # An explicit destination of the other kind is refused before anything starts.
    for vm, to in ((test_vm, q1.name), (lab_vm, t2.name)):
        with pytest.raises(RequestError) as wrong:
            await client.migrate_vm(MigrateVmRequest(name=vm, to=to))
        assert wrong.value.field == "to", wrong.value


def inventory_host(db: Database, vm: str, qemu_lab: QemuLab) -> LabHost:
    """The lab host the inventory has ``vm`` on."""
    found = inventory.get_vm(db, vm)
    assert found is not None
    return next(h for h in qemu_lab.hosts if h.name == found.vm.host)
