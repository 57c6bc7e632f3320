"""Storage models: pool and volume task requests, activity inputs and outputs, inventory rows.

Names never contain path separators or XML metacharacters; sizes are parsed from "1GiB" and
bounded; paths are absolute and normalized. Whether a pool path lies under the allowed roots
(setting ``pool_roots``) depends on the process's settings, so ``check_pool_path`` is called by
the starter (advisory) and by the task's plan phase (authoritative), not by the model.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from taskomatic.models.base import (
    Model,
    Name,
    TaskRequest,
    VolumeFormat,
    VolumeName,
    pool_resource,
)
from taskomatic.units import Capacity

_PATH_RE = re.compile(r"/[A-Za-z0-9_.+/-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*"
                          r"|\[?[0-9A-Fa-f:.]+\]?")


def _check_path(value: str) -> str:
    if not _PATH_RE.fullmatch(value):
        raise ValueError("must be an absolute path of letters, digits and '_.+-/' "
                         f"(got {value!r})")
    if posixpath.normpath(value) != value or "/../" in f"{value}/":
        raise ValueError("must be normalized, without '..', '//' or a trailing '/' "
                         f"(got {value!r})")
    if len(value) > 255:
        raise ValueError("must be at most 255 characters")
    return value


def _check_hostname(value: str) -> str:
    if len(value) > 253 or not _HOSTNAME_RE.fullmatch(value):
        raise ValueError(f"must be a host name or IP address (got {value!r})")
    return value


AbsPath = Annotated[str, AfterValidator(_check_path)]
HostName = Annotated[str, AfterValidator(_check_hostname)]


def check_pool_path(path: str, roots: Sequence[str]) -> str | None:
    """None if ``path`` lies strictly under one of ``roots``; else the reason it does not."""
    candidate = PurePosixPath(path)
    for root in roots:
        base = PurePosixPath(posixpath.normpath(str(root)))
        if candidate != base and candidate.is_relative_to(base):
            return None
    allowed = ", ".join(str(r) for r in roots) or "(none configured)"
    return f"{path} is not under an allowed pool root ({allowed}; setting pool_roots)"


class PoolType(StrEnum):
    DIR = "dir"
    NETFS = "netfs"
    LOGICAL = "logical"


# --- task requests ---------------------------------------------------------------------------


class PoolSource(Model):
    """Where a netfs or logical pool's storage comes from."""

    host: HostName | None = Field(None, description="NFS server (netfs)")
    dir: AbsPath | None = Field(None, description="exported directory (netfs)")
    devices: list[AbsPath] = Field(default_factory=list, max_length=32,
                                   description="physical volumes (logical)")
    name: Name | None = Field(None, description="volume group name (logical)")


class CreatePoolRequest(TaskRequest):
    name: Name
    host: Name
    type: PoolType = PoolType.DIR
    path: AbsPath | None = Field(None, description="target directory; /dev/VG for logical")
    source: PoolSource = Field(default_factory=PoolSource)
    build: bool = Field(True, description="create the backing storage (mkdir, vgcreate)")
    autostart: bool = True
    shared: bool = Field(False, description="shared by the cluster of ``host``: defined and "
                                            "started on each of its hosts (dir on a path they "
                                            "all share, or netfs), not on ``host`` alone")

    @model_validator(mode="after")
    def _fits_type(self) -> CreatePoolRequest:
        src = self.source
        if self.type is PoolType.NETFS and (src.host is None or src.dir is None):
            raise ValueError("source: a netfs pool needs source.host and source.dir")
        if self.type is PoolType.LOGICAL:
            if src.name is None or not src.devices:
                raise ValueError("source: a logical pool needs source.name (the volume group) "
                                 "and at least one source.devices entry")
            if any(not dev.startswith("/dev/") for dev in src.devices):
                raise ValueError("source: logical pool devices must be under /dev/")
            if self.path is None:
                self.path = f"/dev/{src.name}"
            elif self.path != f"/dev/{src.name}":
                raise ValueError(f"path: a logical pool's path is /dev/{src.name}")
        elif self.path is None:
            raise ValueError(f"path: a {self.type} pool needs a target path")
        if self.type is not PoolType.LOGICAL and (src.devices or src.name):
            raise ValueError(f"source: devices and name are for logical pools, not {self.type}")
        if self.type is not PoolType.NETFS and (src.host or src.dir):
            raise ValueError(f"source: host and dir are for netfs pools, not {self.type}")
        if self.shared and self.type is PoolType.LOGICAL:
            raise ValueError("shared: a shared pool is dir (on a path every host shares) or "
                             "netfs, not logical")
        return self

    def resources(self) -> list[str]:
        return [pool_resource(self.name)]


class PoolTaskRequest(TaskRequest):
    name: Name

    def resources(self) -> list[str]:
        return [pool_resource(self.name)]


class DestroyPoolRequest(PoolTaskRequest):
    delete: bool = Field(False, description="also delete its volumes and backing storage")


class RefreshPoolRequest(PoolTaskRequest):
    pass


class SetPoolAutostartRequest(PoolTaskRequest):
    autostart: bool


class VolumeTaskRequest(TaskRequest):
    pool: Name
    name: VolumeName

    def resources(self) -> list[str]:
        return [pool_resource(self.pool)]


class CreateVolumeRequest(VolumeTaskRequest):
    capacity: Capacity
    format: VolumeFormat = "qcow2"
    clone_from: VolumeName | None = Field(None, description="copy this volume of the same pool")


class DeleteVolumeRequest(VolumeTaskRequest):
    pass


class ResizeVolumeRequest(VolumeTaskRequest):
    capacity: Capacity


# --- activity inputs and outputs -------------------------------------------------------------


class PoolRef(Model):
    """One pool on one hypervisor; ``uuid``, when set, guards undos against a foreign pool."""

    host: str
    uri: str
    name: str
    uuid: str | None = None


class PoolSpec(PoolRef):
    type: PoolType
    path: str
    source: PoolSource = Field(default_factory=PoolSource)


class PoolAutostartInput(PoolRef):
    autostart: bool


class PoolReport(Model):
    name: str
    host: str
    active: bool | None = Field(None, description="None when the pool is absent")
    autostart: bool | None = None
    changed: bool
    detail: str


class VolumeInfo(Model):
    name: str
    path: str
    format: str
    capacity: int
    allocation: int


class PoolScan(PoolReport):
    """A refreshed pool: its sizes and every volume libvirt lists in it."""

    capacity: int = 0
    allocation: int = 0
    available: int = 0
    volumes: list[VolumeInfo] = Field(default_factory=list)


class VolumeRef(Model):
    host: str
    uri: str
    pool: str
    name: str


class VolumeSpec(VolumeRef):
    capacity: int
    format: VolumeFormat = "qcow2"
    clone_from: str | None = None

    def ref(self) -> VolumeRef:
        return VolumeRef(host=self.host, uri=self.uri, pool=self.pool, name=self.name)


class ResizeVolumeInput(VolumeRef):
    capacity: int


class VolumeReport(Model):
    pool: str
    name: str
    host: str
    changed: bool
    detail: str
    volume: VolumeInfo | None = Field(None, description="None when the volume is absent")


# --- inventory -------------------------------------------------------------------------------


PoolHostState = Literal["active", "inactive", "failed"]


class PoolHost(Model):
    """A host that has (or should have) a pool: ``active`` (started there: placement counts it
    as seen), ``inactive``, or ``failed`` (it could not be defined or started; ``detail``)."""

    host: str
    state: PoolHostState
    detail: str | None = None


class PoolRecord(Model):
    name: str
    host: str = Field(description="the pool's host; for a shared pool the one it was created "
                                  "from")
    type: PoolType
    path: str
    state: Literal["creating", "active", "inactive"]
    autostart: bool
    capacity: int | None = None
    allocation: int | None = None
    available: int | None = None
    volume_count: int = 0
    scope: Literal["local", "shared"] = "local"
    hosts: list[PoolHost] = Field(default_factory=list, description="the hosts that see it")
    uuid: str | None = Field(None, description="its libvirt UUID, the same on every host")
    source: PoolSource = Field(default_factory=PoolSource)

    @property
    def detail(self) -> str:
        return f"{self.state}, autostart {'on' if self.autostart else 'off'}, " \
               f"{self.volume_count} volume(s)"


class PoolPlacement(Model):
    pool: PoolRecord
    host_uri: str

    def ref(self, uuid: str | None = None) -> PoolRef:
        return PoolRef(host=self.pool.host, uri=self.host_uri, name=self.pool.name, uuid=uuid)

    @property
    def detail(self) -> str:
        return f"{self.pool.type} pool on {self.pool.host}, {self.pool.state}"


class VolumeRecord(Model):
    pool: str
    name: str
    host: str
    format: str
    capacity: int
    allocation: int | None = None
    path: str | None = None
    owner_vm: str | None = Field(None, description="the VM that owns it (deleted with it)")
    used_by: str | None = Field(None, description="the VM it is attached to")

    @property
    def detail(self) -> str:
        return f"{self.format}, {self.capacity} bytes"


class VolumePlacement(Model):
    volume: VolumeRecord
    host_uri: str

    def ref(self) -> VolumeRef:
        v = self.volume
        return VolumeRef(host=v.host, uri=self.host_uri, pool=v.pool, name=v.name)

    @property
    def detail(self) -> str:
        used = f", attached to {self.volume.used_by}" if self.volume.used_by else ""
        return f"{self.volume.format} in {self.volume.pool} on {self.volume.host}{used}"


class ReservePoolInput(Model):
    task_id: str
    request: CreatePoolRequest


class PoolNameInput(Model):
    name: str
    task_id: str | None = None


class VolumeNameInput(Model):
    pool: str
    name: str
    clone_from: str | None = None


class RecordPoolInput(Model):
    scan: PoolScan
    uuid: str | None = Field(None, description="the libvirt UUID its create gave the pool")


class RecordVolumeInput(Model):
    pool: str
    volume: VolumeInfo
    owner_vm: str | None = None


class StorageResult(Model):
    changed: bool
    detail: str


class StorageTaskResult(Model):
    """Result of every pool and volume task."""

    task_id: str
    kind: str
    pool: str
    volume: str | None = None
    host: str | None = None
    state: str | None = Field(None, description="pool or volume state afterwards; None if gone")
    notes: list[str] = Field(default_factory=list)

    def headline(self) -> str:
        what = f"{self.pool}/{self.volume}" if self.volume else self.pool
        where = f" on {self.host}" if self.host else ""
        return f"{self.kind} {what}{where}: {self.state or 'gone'} ({'; '.join(self.notes)})"



class PoolPeers(Model):
    """The other hosts a shared pool belongs on (its cluster's, in service), as pool refs."""

    pool: str
    hosts: list[PoolRef] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        return f"{len(self.hosts)} other host(s)"


class RecordPoolHostInput(Model):
    pool: str
    host: str
    state: PoolHostState
    detail: str | None = None
