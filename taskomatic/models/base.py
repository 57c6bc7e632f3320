"""Pydantic models: every task request, activity input/output and inventory row.

Each workflow and activity takes exactly one of these models, so fields can be added compatibly
(new fields get defaults). Validation lives here, so a bad request is refused before a task exists,
with a message that names the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from taskomatic.states import HostState
from taskomatic.units import Capacity
from taskomatic.uris import check_migration_uri, check_uri

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_VCPUS = 256
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB: beyond any host this engine manages
MIN_MEMORY_MIB = 16


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (got {value!r})"
        )
    return value


_VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}")


def _check_volume_name(value: str) -> str:
    if not _VOLUME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be 1-120 characters of letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit, without '/' or '..' (got {value!r})"
        )
    return value


def _check_volume_path(value: str) -> str:
    pool, sep, volume = value.partition("/")
    if not sep:
        raise ValueError(f"must be POOL/VOLUME (got {value!r})")
    _check_name(pool)
    _check_volume_name(volume)
    return value


Name = Annotated[str, AfterValidator(_check_name)]
VolumeName = Annotated[str, AfterValidator(_check_volume_name)]
VolumePath = Annotated[str, AfterValidator(_check_volume_path)]
VolumeFormat = Literal["qcow2", "raw"]
LibvirtUri = Annotated[str, AfterValidator(check_uri)]
MigrationUri = Annotated[str, AfterValidator(check_migration_uri)]
Vcpus = Annotated[int, Field(ge=1, le=MAX_VCPUS)]
MemoryMib = Annotated[int, Field(ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)]


class Model(BaseModel):
    """Base for every model: strict about unknown fields, so typos are errors, not no-ops."""

    model_config = ConfigDict(extra="forbid")


# --- inventory -------------------------------------------------------------------------------


class VmState(StrEnum):
    """Power state as libvirt reports it, plus the transitional states of the inventory."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutdown"  # a guest shutdown is in progress
    CRASHED = "crashed"
    SUSPENDED = "pmsuspended"
    UNKNOWN = "unknown"


class HostSpec(Model):
    """``taskomatic host add``: a hypervisor and the capacity the engine may place on it."""

    name: Name
    uri: LibvirtUri
    vcpus: Annotated[int, Field(ge=1, le=65_536)] = 16
    memory_mib: Annotated[int, Field(ge=64, le=64 * 1024 * 1024)] = 32_768
    migration_uri: MigrationUri | None = Field(
        None, description="where this host receives live migrations, e.g. tcp://10.0.0.2")


class HostRecord(Model):
    name: str
    uri: str
    state: HostState
    migration_uri: str | None = None
    vcpus: int
    memory_mib: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    reserved_vcpus: int = 0
    reserved_memory_mib: int = 0
    vm_count: int = 0


class VmRecord(Model):
    name: str
    uuid: str
    host: str
    vcpus: int
    memory_mib: int
    state: VmState
    origin_host: str | None = Field(None, description="the host it was moved off while clearing")
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def detail(self) -> str:
        return f"{self.state} on {self.host}"


class VmPlacement(Model):
    """Where a VM lives, with what an activity needs to reach it."""

    vm: VmRecord
    host_uri: str
    host_state: HostState | None = None
    host_migration_uri: str | None = None

    @property
    def detail(self) -> str:
        return f"{self.vm.state} on {self.vm.host}"


# --- task requests (the single input of each workflow) ----------------------------------------


_TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def _check_task_id(value: str) -> str:
    if not _TASK_ID_RE.fullmatch(value):
        raise ValueError("must be a task id: 1-200 letters, digits, '.', '_', ':' or '-' "
                         f"(got {value!r})")
    return value


TaskId = Annotated[str, AfterValidator(_check_task_id)]


def _check_requester(value: str) -> str:
    if not value.strip() or not value.isprintable() or len(value) > 200:
        raise ValueError(f"must be 1-200 printable characters naming who asks (got {value!r})")
    return value


Requester = Annotated[str, AfterValidator(_check_requester)]


def vm_resource(name: str) -> str:
    return f"vm:{name}"


def host_resource(name: str) -> str:
    return f"host:{name}"


def pool_resource(name: str) -> str:
    return f"pool:{name}"


class TaskRequest(Model):
    """Fields every task request carries.

    ``after`` lists tasks that must complete before this one runs. ``resources()`` names what the
    task changes ("vm:web1", "host:h1", "pool:images"): tasks sharing a resource run one at a
    time, in submission order.
    """

    requested_by: Requester | None = None
    after: list[TaskId] = Field(default_factory=list, max_length=100)
    ordered: bool = Field(True, description="False skips per-resource ordering (benchmarks, "
                                            "emergency repair); prerequisites still apply")

    def resources(self) -> list[str]:
        return []


class DiskRequest(Model):
    """One disk of a new VM: an existing volume ``POOL/VOLUME``, or a new one of ``size`` in
    ``pool`` that the VM owns (deleted with it)."""

    volume: VolumePath | None = None
    pool: Name | None = None
    size: Capacity | None = None
    format: VolumeFormat = "qcow2"

    @model_validator(mode="after")
    def _one_kind(self) -> DiskRequest:
        if self.volume is not None and (self.pool is not None or self.size is not None):
            raise ValueError("give either volume (existing POOL/VOLUME) or pool and size (new)")
        if self.volume is None and (self.pool is None or self.size is None):
            raise ValueError("a new disk needs both pool and size")
        return self

    @property
    def pool_name(self) -> str:
        return self.volume.partition("/")[0] if self.volume else str(self.pool)


class CreateVmRequest(TaskRequest):
    name: Name
    vcpus: Vcpus = 1
    memory_mib: MemoryMib = 512
    host: Name | None = Field(None, description="place on this host; chosen by placement if unset")
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


# --- activity inputs and outputs --------------------------------------------------------------


class ReserveCapacityInput(Model):
    task_id: str
    vm_name: str
    vcpus: int
    memory_mib: int
    host: str | None = None
    exclude: list[str] = Field(default_factory=list, description="hosts never to pick")
    host_field: str = Field("host", description="the request field that pinned ``host``")


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


class LookupVmInput(Model):
    name: str


class SetVmStateInput(Model):
    name: str
    state: VmState


class RemoveVmInput(Model):
    name: str


class InventoryResult(Model):
    changed: bool
    detail: str


# --- task progress, results and failures ------------------------------------------------------


class StepState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


class StepRecord(Model):
    name: str
    state: StepState
    started_at: datetime
    finished_at: datetime | None = None
    detail: str | None = None


# What operators see of a task: submitted, waiting its turn (prerequisites or a resource), running,
# then one of the three ends.
TaskState = Literal["new", "waiting", "running", "complete", "error", "cancelled"]
TASK_STATES: tuple[TaskState, ...] = ("new", "waiting", "running", "complete", "error",
                                      "cancelled")
# Where a task is in its runbook: it plans (validates and reserves in the inventory), runs (on
# the hypervisor) and finalizes (records the outcome); then it is done, or it compensates (runs
# its undos, newest first) and has failed.
Phase = Literal["plan", "run", "finalize", "compensate", "done", "failed"]


class TaskProgress(Model):
    """Answer of every task's ``progress`` query."""

    task_id: str
    kind: str
    phase: Phase
    current_step: str | None = None
    steps: list[StepRecord] = []
    vm: str | None = None
    host: str | None = None
    state: TaskState = "running"
    waiting_on: list[str] = []
    percent: float | None = Field(None, description="how far the task's long step is, 0-100")


class TaskFailure(Model):
    """The structured error of a failed task: what failed, where, why, and what was undone."""

    task_id: str
    kind: str
    step: str
    error_type: str
    message: str
    field: str | None = None
    retryable: bool = False
    libvirt_code: int | None = None
    host: str | None = None
    vm: str | None = None
    compensated: list[str] = []
    compensation_failed: list[str] = Field(
        default_factory=list, description="undo steps that failed: check these by hand")


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
