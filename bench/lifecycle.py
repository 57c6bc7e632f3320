"""The taskomatic side: test-driver hosts, and each VM's CreateVm → StopVm → DestroyVm chain."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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

# The task kinds of one VM's chain, in order (``lifecycle_chain``).
CHAIN: tuple[str, ...] = ("CreateVm", "StopVm", "DestroyVm")
Key = tuple[str, str]  # (workflow type, activity type)

VM_VCPUS = 1
VM_MEMORY_MIB = 128


@dataclass(frozen=True)
class ChainSteps:
    """What one VM's chain runs, derived from a run of the real workflows (the warm-up), never
    written down by hand: a step added to a task changes it, and the baseline with it.

    ``per_vm``: executions of each (workflow type, activity type) per chain. ``ordering``: those
    that ran on the ordering queue (claims, releases, waits): the ordering machinery, which is
    part of what is measured and has no counterpart in the baseline.
    """

    per_vm: dict[Key, int]
    ordering: frozenset[Key]

    @classmethod
    def derive(cls, counts: Counter[Key], vms: int, queues: dict[Key, str],
               ordering_queue: str) -> tuple[ChainSteps, list[str]]:
        """From ``counts``, the executions of ``vms`` chains, and the queue each activity ran
        on; with the problems found (an activity run a number of times not a multiple of
        ``vms``: a chain that retried or took another path)."""
        problems = [f"warm-up: {k[0]}.{k[1]} ran {n} times in {vms} chains"
                    for k, n in sorted(counts.items()) if n % vms]
        per_vm = {k: n // vms for k, n in sorted(counts.items()) if n >= vms}
        missing = [kind for kind in CHAIN if not any(k[0] == kind for k in per_vm)]
        problems += [f"warm-up: no activity of {kind} seen" for kind in missing]
        ordering = frozenset(k for k in per_vm if queues.get(k) == ordering_queue)
        return cls(per_vm, ordering), problems

    def expected(self, vms: int) -> Counter[Key]:
        """(workflow type, activity type) → executions expected for ``vms`` chains."""
        return Counter({k: n * vms for k, n in self.per_vm.items()})

    def baseline(self) -> tuple[tuple[str, int], ...]:
        """Per task kind of the chain, its hypervisor and inventory steps (the ordering
        machinery left out): what the baseline's workflow for that task runs."""
        return tuple((kind, sum(n for k, n in self.per_vm.items()
                                if k[0] == kind and k not in self.ordering))
                     for kind in CHAIN)

    def describe(self) -> dict[str, list[str]]:
        """Per task kind, its activities (``xN`` when run N times; ``(ordering)`` marked)."""
        return {kind: [k[1] + (f" x{n}" if n > 1 else "")
                       + (" (ordering)" if k in self.ordering else "")
                       for k, n in self.per_vm.items() if k[0] == kind] for kind in CHAIN}


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
        create, stop, destroy = CHAIN
        created: VmTaskResult = await timed(create, partial(
            client.create_vm, CreateVmRequest(name=name, vcpus=VM_VCPUS,
                                              memory_mib=VM_MEMORY_MIB, start=True)), rec)
        _expect(created, VmState.RUNNING)
        stopped: VmTaskResult = await timed(
            stop, partial(client.stop_vm, StopVmRequest(name=name, force=True)), rec)
        _expect(stopped, VmState.SHUTOFF)
        destroyed: VmTaskResult = await timed(
            destroy, partial(client.destroy_vm, DestroyVmRequest(name=name)), rec)
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
