"""Models of moving one VM to another host (``MigrateVm``, and ``StartVm`` off a host that left
service): limits, the destination's reservation, the migration and where the domain runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from taskomatic.models.base import Model, Name, TaskRequest, vm_resource
from taskomatic.models.storage import VolumeInfo
from taskomatic.models.vms import Reservation, VmState

MAX_MIGRATION_HOSTS = 3  # destinations one MigrateVm tries before it gives up


Seconds = Annotated[float, Field(gt=0, le=86_400)]


class MigrationLimits(Model):
    """How a migration may run; the starter fills these from the settings."""

    bandwidth_mib_s: Annotated[int, Field(ge=0, le=100_000)] = 0
    progress_timeout_seconds: Seconds = 30.0
    completion_timeout_seconds: Seconds = 600.0
    unsafe: bool = Field(False, description="allow local disks (VIR_MIGRATE_UNSAFE): only when "
                                            "both hosts see the same storage")


class MigrateVmRequest(TaskRequest):
    """``taskomatic vm migrate NAME [--to HOST]``."""

    name: Name
    to: Name | None = Field(None, description="destination host; chosen by placement if unset")
    from_host: Name | None = Field(
        None, description="move only if the VM is still on this host (set by clear-host)")
    limits: MigrationLimits = Field(default_factory=MigrationLimits)
    copy_storage: bool = Field(False, description="allow a storage copy: disks on a local pool "
                                                  "are copied to a local pool of the destination")

    def resources(self) -> list[str]:
        return [vm_resource(self.name)]


class HostRef(Model):
    """A host as an activity needs it: name, libvirt URI, migration URI."""

    name: str
    uri: str
    migration_uri: str | None = None


class VolumeCopy(Model):
    """A disk a move with a storage copy copies: the VM's disk ``target`` (``vda``), its volume
    (``source_pool``/``volume``, a local pool of the source), made first with the same name,
    ``format`` and ``capacity`` (bytes) in the destination's local pool ``pool``."""

    target: str
    source_pool: str
    volume: str
    format: str
    capacity: int
    pool: str


class SwitchDisksInput(Model):
    """After a move with a storage copy to ``host``: point ``vm``'s disks at the copies, each
    made as ``made`` (the destination volumes, as libvirt described them, in the order of
    ``copies``) — only if the inventory has the VM on ``host`` (the move is recorded)."""

    vm: str
    host: str
    copies: list[VolumeCopy]
    made: list[VolumeInfo]


class MoveStorage(Model):
    """What a move needs to know of the VM's disks: the shared pools they are in, refreshed on
    the destination before the move so its libvirt knows the volumes; ``unsafe`` when one is a
    ``dir`` pool, whose sharing libvirt cannot detect (the move then passes
    ``VIR_MIGRATE_UNSAFE``: the cluster shares the path, as the pool's creator declared);
    ``copies``: with a storage copy, the disks on local pools (``VIR_MIGRATE_NON_SHARED_DISK``)."""

    shared_pools: list[str] = Field(default_factory=list)
    unsafe: bool = False
    copies: list[VolumeCopy] = Field(default_factory=list)


class MigrateDomainInput(Model):
    name: str
    source: HostRef
    destination: HostRef
    limits: MigrationLimits
    save_dir: str | None = Field(None, description="cold moves: the worker's setting if unset")
    storage: MoveStorage = Field(default_factory=MoveStorage)


class MigrationReport(Model):
    name: str
    source: str
    destination: str
    mode: Literal["live", "offline", "cold", "none"]
    changed: bool
    seconds: float = 0.0
    detail: str


class MoveReservation(Reservation):
    """Room reserved on a migration's destination, with how to reach it."""

    migration_uri: str | None = None
    storage: MoveStorage = Field(default_factory=MoveStorage)

    def ref(self) -> HostRef:
        return HostRef(name=self.host, uri=self.host_uri, migration_uri=self.migration_uri)


class LocateDomainInput(Model):
    name: str
    hosts: list[HostRef]
    save_dir: str | None = None
    recover_on: str | None = Field(
        None, description="host where a domain left saved (cold move cut short) is resumed")


class DomainWhereabouts(Model):
    """Where libvirt has a domain: the host it runs (or is defined) on, if any."""

    name: str
    host: str | None
    state: VmState | None = None
    also_defined_on: list[str] = Field(default_factory=list)
    unreachable: list[str] = Field(default_factory=list,
                                   description="hosts that could not be asked")
    detail: str


class ConfirmMoveInput(Model):
    """Find where a VM being moved really is, and make the inventory say the same."""

    task_id: str
    name: str
    source: HostRef
    destination: HostRef
    save_dir: str | None = None


class MoveConfirmation(Model):
    name: str
    host: str
    state: VmState | None
    moved: bool
    detail: str


class RecordMoveInput(Model):
    task_id: str
    name: str
    source: str
    destination: str
    state: VmState


class HostDomain(Model):
    name: str
    uuid: str
    state: VmState
    vcpus: int
    memory_mib: int


class HostDomains(Model):
    host: str
    domains: list[HostDomain]

    @property
    def detail(self) -> str:
        return f"{len(self.domains)} domains on {self.host}"


class MigrationProgressSignal(Model):
    percent: float
    detail: str

