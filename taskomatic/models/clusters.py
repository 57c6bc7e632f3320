"""Models of clusters (oVirt's cluster, Nova's host aggregate): a set of hosts of one
hypervisor type and CPU baseline, inside which placement and migration stay, and the facts
``host add`` reads from libvirt to check that a host may join one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from taskomatic.models.base import Model, Name

Weigher = Literal["spread", "pack"]
"""How placement orders the hosts of a cluster that can take a VM: ``spread`` (least loaded
first, the default) or ``pack`` (most loaded first, to keep hosts empty)."""

GroupPolicy = Literal["anti-affinity", "soft-anti-affinity", "affinity"]
"""An affinity group's rule (oVirt's affinity groups, Nova's server groups): its VMs never
share a host (``anti-affinity``), preferably not (``soft-anti-affinity``: a weigher), or always
share one (``affinity``)."""

HypervisorType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")]
"""A libvirt driver as ``virConnectGetType()`` names it, lower case: ``test``, ``qemu``, …"""

CpuModel = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")]
"""A CPU model name as libvirt reports it (``Skylake-Client-IBRS``; ``x86_64``)."""

# Nova's initial allocation ratios (initial_cpu_allocation_ratio, initial_ram_allocation_ratio).
DEFAULT_VCPU_OVERCOMMIT = 4.0
DEFAULT_MEMORY_OVERCOMMIT = 1.0


class ClusterSpec(Model):
    """``taskomatic cluster create``: a cluster and its placement policy."""

    name: Name
    hypervisor_type: HypervisorType = Field(
        description="libvirt driver of its hosts (virConnectGetType, lower case): test, qemu")
    cpu_model: CpuModel | None = Field(
        None, description="CPU baseline: a host joins only if libvirt reports this CPU model")
    vcpu_overcommit: Annotated[float, Field(gt=0, le=64)] = Field(
        DEFAULT_VCPU_OVERCOMMIT, description="vCPUs placed per physical CPU")
    memory_overcommit: Annotated[float, Field(gt=0, le=4)] = Field(
        DEFAULT_MEMORY_OVERCOMMIT, description="MiB placed per MiB of host memory")
    weigher: Weigher = "spread"


class ClusterChange(Model):
    """``taskomatic cluster set`` / ``PATCH /clusters/{name}``: a cluster's new placement
    policy; a field left out (None) keeps its value. The hypervisor type and CPU baseline do
    not change (its hosts joined by them). Lowering a ratio is refused when a host whose
    capacity derives from it would have less than its VMs and reservations use."""

    vcpu_overcommit: Annotated[float, Field(gt=0, le=64)] | None = Field(
        None, description="vCPUs placed per physical CPU (None: unchanged)")
    memory_overcommit: Annotated[float, Field(gt=0, le=4)] | None = Field(
        None, description="MiB placed per MiB of host memory (None: unchanged)")
    weigher: Weigher | None = Field(
        None, description="spread: least loaded host first; pack: most loaded first"
                          " (None: unchanged)")


class ClusterRecord(ClusterSpec):
    """A cluster as the inventory has it, with its hosts (names, in name order) and their
    capacity and use added up (vCPUs, MiB; use counts VMs and reservations)."""

    hosts: list[str] = Field(default_factory=list)
    vcpus: int = 0
    memory_mib: int = 0
    used_vcpus: int = 0
    used_memory_mib: int = 0


class HostFacts(Model):
    """What libvirt says of a hypervisor, read by ``host add``: its identity
    (``taskomatic.hypervisor.identity``), driver (``getType()``, lower case), CPU model (the
    capabilities' ``host/cpu/model``, else ``getInfo()[0]``), CPUs and memory in MiB
    (``getInfo()``)."""

    identity: str | None = None
    hypervisor_type: str
    cpu_model: str | None = None
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
