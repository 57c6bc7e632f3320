"""Models of the VM tasks (create, start, stop, destroy): requests, inventory rows, capacity
reservations, and the inputs and outputs of their activities.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from taskomatic.models.base import Model, Name, TaskRequest, pool_resource, vm_resource
from taskomatic.models.clusters import GroupPolicy
from taskomatic.models.disks import DiskRequest
from taskomatic.states import HostState

MAX_VCPUS = 256


MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB: beyond any host this engine manages


MIN_MEMORY_MIB = 16


Vcpus = Annotated[int, Field(ge=1, le=MAX_VCPUS)]


MemoryMib = Annotated[int, Field(ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)]


class VmState(StrEnum):
    """Power state as libvirt reports it, plus the transitional states of the inventory."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutdown"  # a guest shutdown is in progress
    CRASHED = "crashed"
    SUSPENDED = "pmsuspended"
    UNKNOWN = "unknown"


class VmRecord(Model):
    name: str
    uuid: str
    host: str
    vcpus: int
    memory_mib: int
    state: VmState
    state_reason: str | None = Field(None, description="why the state is what it is, when not "
                                                       "libvirt's word (unknown: its host's)")
    origin_host: str | None = Field(None, description="the host it was moved off while clearing")
    group: str | None = Field(None, description="its affinity group")
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def detail(self) -> str:
        return f"{self.state} on {self.host}"


# Fields of a task's last inventory step, which may release the task's claims in its own
# transaction (``inventory.ordering.finishing``).
_RELEASE_TASK = ("the task whose claims this step releases in its transaction (the task's last "
                 "step); None: the task releases them itself")
_WOKEN = "waiting tasks the step's release lets go on, to be woken"


class RecordedVm(VmRecord):
    """The ``record_vm`` step's result: the VM's row, and whom its release lets go on."""

    woken: list[str] = Field(default_factory=list, description=_WOKEN)


class VmPlacement(Model):
    """Where a VM lives, with what an activity needs to reach it."""

    vm: VmRecord
    host_uri: str
    host_state: HostState | None = None
    host_migration_uri: str | None = None

    @property
    def detail(self) -> str:
        return f"{self.vm.state} on {self.vm.host}"


class CreateVmRequest(TaskRequest):
    name: Name
    vcpus: Vcpus = 1
    memory_mib: MemoryMib = 512
    host: Name | None = Field(None, description="place on this host; chosen by placement if unset")
    cluster: Name | None = Field(None, description="place in this cluster; any if unset")
    group: Name | None = Field(None, description="its affinity group (made on first use)")
    group_policy: GroupPolicy | None = Field(
        None, description="the rule of a new group (default anti-affinity); must match an "
                          "existing group's")
    start: bool = False
    disks: list[DiskRequest] = Field(default_factory=list, max_length=16)

    def resources(self) -> list[str]:
        pools = sorted({disk.pool_name for disk in self.disks})
        return [vm_resource(self.name), *(pool_resource(p) for p in pools)]


class StartVmRequest(TaskRequest):
    name: Name

    def resources(self) -> list[str]:
        return [vm_resource(self.name)]


class StopVmRequest(TaskRequest):
    name: Name
    force: bool = Field(False, description="destroy at once instead of a graceful shutdown")
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        None, description="graceful shutdown wait before forcing; the worker's setting if unset"
    )

    def resources(self) -> list[str]:
        return [vm_resource(self.name)]


class DestroyVmRequest(TaskRequest):
    name: Name
    keep_disks: bool = Field(False, description="keep the volumes the VM owns")

    def resources(self) -> list[str]:
        return [vm_resource(self.name)]


class ReserveCapacityInput(Model):
    task_id: str
    vm_name: str
    vcpus: int
    memory_mib: int
    host: str | None = None
    exclude: list[str] = Field(default_factory=list, description="hosts never to pick")
    host_field: str = Field("host", description="the request field that pinned ``host``")
    cluster: str | None = Field(None, description="the cluster to place in (None: any; a move"
                                                  " stays in its source's cluster)")
    group: str | None = Field(None, description="the VM's affinity group (a move: its own)")
    group_policy: GroupPolicy | None = None
    pools: list[str] = Field(default_factory=list, description="a new VM's disks' pools: only "
                                                               "a host that sees them all")
    copy_storage: bool = Field(False, description="a move: copy the disks on local pools")


class Reservation(Model):
    task_id: str
    vm_name: str
    host: str
    host_uri: str
    vcpus: int
    memory_mib: int

    @property
    def detail(self) -> str:
        return f"{self.vcpus} vCPUs / {self.memory_mib} MiB on {self.host}"


class ReleaseCapacityInput(Model):
    task_id: str


class ReleaseResult(Model):
    released: bool
    detail: str


class DomainRef(Model):
    """One domain on one hypervisor."""

    host: str
    uri: str
    name: str


class DiskSpec(Model):
    """A volume attached to a domain, as its XML names it."""

    pool: str
    volume: str
    format: str
    target: str


class DomainSpec(DomainRef):
    uuid: str
    vcpus: int
    memory_mib: int
    disks: list[DiskSpec] = Field(default_factory=list)


class WaitShutoffInput(DomainRef):
    timeout_seconds: float


class DomainReport(Model):
    """What a hypervisor action found and did. ``changed`` is False for an idempotent no-op."""

    name: str
    host: str
    state: VmState | None = Field(None, description="power state afterwards; None if absent")
    changed: bool
    detail: str


class RecordVmInput(Model):
    task_id: str
    name: str
    uuid: str
    host: str
    vcpus: int
    memory_mib: int
    state: VmState
    release_task: str | None = Field(None, description=_RELEASE_TASK)


class LookupVmInput(Model):
    name: str


class SetVmStateInput(Model):
    name: str
    state: VmState
    release_task: str | None = Field(None, description=_RELEASE_TASK)


class RemoveVmInput(Model):
    name: str
    release_task: str | None = Field(None, description=_RELEASE_TASK)


class InventoryResult(Model):
    changed: bool
    detail: str
    woken: list[str] = Field(default_factory=list, description=_WOKEN)


class VmTaskResult(Model):
    """Result of every VM lifecycle task."""

    task_id: str
    kind: str
    vm: str
    host: str | None
    state: VmState | None
    uuid: str | None = None
    notes: list[str] = Field(default_factory=list, description="what idempotent steps found")

    def headline(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"{self.kind} {self.vm}{where}: {self.state or 'gone'} ({'; '.join(self.notes)})"
