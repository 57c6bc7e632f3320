"""The disks of VMs: the plan of a new VM's disks, what is attached, and the steps' inputs."""

from __future__ import annotations

from typing import Literal

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
    host: str | None = Field(None, description="the one host that sees every disk's pool "
                                               "(None: several do, or no disks)")
    disks: list[PlannedDisk] = Field(default_factory=list)
    pools: list[str] = Field(default_factory=list, description="the pools of the disks")

    def on(self, host: str, uri: str) -> DiskPlan:
        """This plan with the disks of shared pools (no single host) made on ``host``: a
        volume of a shared pool is created through the host the VM goes to."""
        if self.host is not None:
            return self
        disks = [d.model_copy(update={"host": host, "host_uri": uri}) for d in self.disks]
        return self.model_copy(update={"disks": disks})

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


class PoolSight(Model):
    """A pool a VM's disks are in, and the hosts that see it (``pool_hosts``: started there)."""

    pool: str
    scope: Literal["local", "shared"]
    hosts: list[str] = Field(default_factory=list)

    @property
    def where(self) -> str:
        """``local to h1``, ``shared, seen by h1, h2`` or ``seen by no host``."""
        if not self.hosts:
            return "seen by no host"
        listed = ", ".join(self.hosts)
        return f"local to {listed}" if self.scope == "local" else f"shared, seen by {listed}"


class StorageReach(Model):
    """Where a VM's storage lets it go: the VM, the host it is on, and every pool its disks
    are in. A VM without disks goes anywhere."""

    vm: str
    host: str
    pools: list[PoolSight] = Field(default_factory=list)

    def names(self, copy: bool = False) -> frozenset[str]:
        """The pools a destination must see (placement's ``pools``): every pool of the VM's
        disks, or with a storage copy (``copy``) only the shared ones."""
        return frozenset(p.pool for p in self._kept(copy))

    def _kept(self, copy: bool) -> list[PoolSight]:
        return [p for p in self.pools if not copy or p.scope == "shared"]

    def unseen_by(self, host: str, copy: bool = False) -> str | None:
        """Why the VM cannot go to ``host`` for its storage (``h2 does not see pool 'images'
        (local to h1)``), or None when ``host`` sees all its pools (with ``copy``: its shared
        ones; the local ones are copied)."""
        missing = [p for p in self._kept(copy) if host not in p.hosts]
        if not missing:
            return None
        return f"{host} does not see {self._listed(missing)}"

    def not_movable(self, copy: bool = False) -> str | None:
        """Why the VM cannot leave its host for its storage: None when another host sees every
        pool its disks are in (with ``copy``: every shared one), or it has none. Without
        ``copy``, a VM with a disk on a local pool is told to allow a storage copy."""
        kept = self._kept(copy)
        seeing = set.intersection(*(set(p.hosts) for p in kept)) if kept else {""}
        if seeing - {self.host}:
            return None
        together = "" if len(kept) == 1 else " together"
        hint = ("; allow a storage copy (--copy-storage) to move it"
                if not copy and any(p.scope == "local" for p in kept) else "")
        return (f"not movable: its disks are in {self._listed(kept)}, which no other "
                f"host sees{together}{hint}")

    @staticmethod
    def _listed(pools: list[PoolSight]) -> str:
        if len(pools) == 1:
            return f"pool {pools[0].pool!r} ({pools[0].where})"
        return "pools " + ", ".join(f"{p.pool!r} ({p.where})" for p in pools)
