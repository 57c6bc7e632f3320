"""The taskomatic side: test-driver hosts, and each VM's CreateVm → StopVm → DestroyVm chain."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from bench.runner import Chain, Recorder, timed
from starter.client import TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostSpec,
    StopVmRequest,
    VmState,
    VmTaskResult,
)

# The activities each task runs on the happy path, read from workflows/vms.py:
#   CreateVm(start=True): reserve capacity, define domain, start domain, record VM
#   StopVm(force=True):   look up VM, power off (destroy_domain), record state
#   DestroyVm:            look up VM, power off, undefine domain, remove from inventory
# and, for each, the release of its VM in the line (the starter takes the VM at submission: a
# chain's tasks never find it taken). The probe checks every run against this (per workflow type
# and activity type).
EXPECTED_ACTIVITIES: dict[str, tuple[str, ...]] = {
    "CreateVm": ("reserve_capacity", "define_domain", "start_domain", "record_vm",
                 "release_resources"),
    "StopVm": ("lookup_vm", "destroy_domain", "set_vm_state", "release_resources"),
    "DestroyVm": ("lookup_vm", "destroy_domain", "undefine_domain", "remove_vm",
                  "release_resources"),
}
STEPS: tuple[tuple[str, int], ...] = tuple(
    (kind, len(acts)) for kind, acts in EXPECTED_ACTIVITIES.items())
ACTIVITIES_PER_VM = sum(n for _, n in STEPS)

VM_VCPUS = 1
VM_MEMORY_MIB = 128


def expected_counts(vms: int) -> Counter[tuple[str, str]]:
    """(workflow type, activity type) → executions expected for ``vms`` lifecycles."""
    counts: Counter[tuple[str, str]] = Counter()
    for kind, acts in EXPECTED_ACTIVITIES.items():
        for act in acts:
            counts[(kind, act)] += vms
    return counts


def add_hosts(db: Database, hypervisors: Hypervisors, directory: Path, prefix: str,
              count: int, vcpus: int, memory_mib: int) -> list[HostSpec]:
    """Register ``count`` test-driver hosts and open the worker's connection to each."""
    hosts = []
    for i in range(1, count + 1):
        name = f"bench-{prefix}-h{i}"
        spec = HostSpec(name=name, uri=write_test_host(directory, name, vcpus, memory_mib),
                        vcpus=vcpus, memory_mib=memory_mib)
        inventory.add_host(db, spec)
        hypervisors.connection(spec.uri)  # a test:/// host lives as long as this connection
        hosts.append(spec)
    return hosts


def lifecycle_chain(client: TaskomaticClient, prefix: str) -> Chain:
    """Create (and start) a VM where placement puts it, force-stop it, destroy it."""

    async def chain(index: int, rec: Recorder) -> None:
        name = f"bench-{prefix}-vm{index}"
        created: VmTaskResult = await timed("CreateVm", partial(
            client.create_vm, CreateVmRequest(name=name, vcpus=VM_VCPUS,
                                              memory_mib=VM_MEMORY_MIB, start=True)), rec)
        _expect(created, VmState.RUNNING)
        stopped: VmTaskResult = await timed(
            "StopVm", partial(client.stop_vm, StopVmRequest(name=name, force=True)), rec)
        _expect(stopped, VmState.SHUTOFF)
        destroyed: VmTaskResult = await timed(
            "DestroyVm", partial(client.destroy_vm, DestroyVmRequest(name=name)), rec)
        _expect(destroyed, None)

    return chain


def _expect(result: VmTaskResult, state: VmState | None) -> None:
    if result.state != state:
        raise RuntimeError(f"{result.kind} {result.vm}: state {result.state}, expected {state}")


def leftovers(db: Database, hypervisors: Hypervisors, hosts: list[HostSpec]) -> list[str]:
    """What a finished run left behind: VMs, reservations, libvirt domains (should be none)."""
    found = [f"inventory VM {vm.name}" for vm in inventory.list_vms(db)]
    with db.transaction() as cur:
        cur.execute("SELECT vm_name FROM reservations")
        found += [f"reservation for {row['vm_name']}" for row in cur.fetchall()]
    for host in hosts:
        conn = hypervisors.connection(host.uri)
        found += [f"domain {dom.name()} on {host.name}" for dom in conn.listAllDomains()]
    return found
