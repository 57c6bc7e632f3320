"""The disks of VMs: the plan of a new VM's disks, what is attached, and the steps' inputs."""

from __future__ import annotations

from pydantic import Field

from taskomatic.models.base import DiskRequest, Model, VolumeFormat
from taskomatic.models.storage import VolumeInfo, VolumeRef


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
