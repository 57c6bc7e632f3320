from __future__ import annotations

from conftest import Lab
from starter.client import TaskomaticClient
from taskomatic.models import CreateVmRequest, DestroyVmRequest, StopVmRequest


async def test_create_start_stop_destroy(client: TaskomaticClient, lab: Lab) -> None:
    host = lab.host()
    name = lab.vm_name("a")
    res = await (await client.create_vm(CreateVmRequest(name=name, memory_mib=256, vcpus=2,
                                                         host=host.name, start=True))).result()
    assert res.state == "running" and res.host == host.name
    assert lab.domains(host) == {name: True}
    res = await (await client.stop_vm(StopVmRequest(name=name))).result()
    assert lab.domains(host) == {name: False}
    res = await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    assert lab.domains(host) == {}
