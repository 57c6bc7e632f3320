"""The disks of VMs: the plan of a new VM's disks, what is attached, and the steps' inputs."""

from __future__ import annotations

from pydantic import Field, model_validator

from taskomatic.models.base import Model, Name, VolumeFormat, VolumePath, check_volume_name
from taskomatic.models.storage import VolumeInfo, VolumeRef
from taskomatic.units import Capacity


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


def owned_volume_name(vm: str, index: int, fmt: VolumeFormat) -> str:
    """The name of the new volume ``index`` (0-15) a create of VM ``vm`` makes, owned by it:
    ``<vm>-disk<index>.<format>`` (``web1-disk0.qcow2``). Checked as every volume name is
    (ValueError if it would not be one), so the volume verbs always take it."""
    return check_volume_name(f"{vm}-disk{index}.{fmt}")


class PlannedDisk(Model):
    """A disk of a VM being created: the volume, whether the task creates it, where it goes."""

    pool: str
    volume: str
    format: VolumeFormat
    target: str
    capacity: int | None = Field(None, description="set for a volume this task creates")
    host: str
    host_uri: str

    @property
    def new(self) -> bool:
        return self.capacity is not None


class DiskPlan(Model):
    vm: str
    host: str | None = Field(None, description="the host every disk's pool is on")
    disks: list[PlannedDisk] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        if not self.disks:
            return "no disks"
        made = sum(1 for d in self.disks if d.new)
        return f"{len(self.disks)} disk(s) on {self.host}, {made} to create"


class PlanDisksInput(Model):
    vm: str
    host: str | None = None
    disks: list[DiskRequest]


class RecordVmDisksInput(Model):
    vm: str
    disks: list[PlannedDisk]
    created: list[VolumeInfo] = Field(default_factory=list)


class VmNameInput(Model):
    vm: str


class VmIdentity(Model):
    vm: str
    uuid: str


class ReleaseVmVolumesInput(Model):
    vm: str
    keep: bool


class AttachedDisk(Model):
    pool: str
    volume: str
    target: str
    owned: bool
    host: str
    host_uri: str

    def ref(self) -> VolumeRef:
        return VolumeRef(host=self.host, uri=self.host_uri, pool=self.pool, name=self.volume)


class VmDisks(Model):
    vm: str
    disks: list[AttachedDisk] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        owned = sum(1 for d in self.disks if d.owned)
        return f"{len(self.disks)} disk(s), {owned} owned" if self.disks else "no disks"
