"""Models of moving VMs between hosts: migrate one VM, clear a host, activate and restore it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from taskomatic.models.base import (
    Model,
    Name,
    Reservation,
    TaskRequest,
    VmState,
    host_resource,
    vm_resource,
)
from taskomatic.states import HostState, HostTransition, transition_to

MAX_MIGRATION_HOSTS = 3  # destinations one MigrateVm tries before it gives up
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class MigrationLimits(Model):
    """How a migration may run; the starter fills these from the settings."""

    bandwidth_mib_s: Annotated[int, Field(ge=0, le=100_000)] = 0
    progress_timeout_seconds: Seconds = 30.0
    completion_timeout_seconds: Seconds = 600.0
    unsafe: bool = Field(False, description="allow local disks (VIR_MIGRATE_UNSAFE): only when "
                                            "both hosts see the same storage")


# --- task requests ------------------------------------------------------------------------------


class MigrateVmRequest(TaskRequest):
    """``taskomatic vm migrate NAME [--to HOST]``."""

    name: Name
    to: Name | None = Field(None, description="destination host; chosen by placement if unset")
    from_host: Name | None = Field(
        None, description="move only if the VM is still on this host (set by clear-host)")
    limits: MigrationLimits = Field(default_factory=MigrationLimits)

    def resources(self) -> list[str]:
        return [vm_resource(self.name)]


class ClearHostRequest(TaskRequest):
    """``taskomatic host clear NAME [--dry-run] [--stop-unmigratable]``."""

    host: Name
    dry_run: bool = False
    stop_unmigratable: bool = False
    parallel: Annotated[int, Field(ge=1, le=1_000)] = Field(
        5, description="migrations in flight at once (the cluster limit)")
    batch: Annotated[int, Field(ge=1, le=1_000)] = Field(
        50, description="VMs handled per run before the history is restarted (continue-as-new)")
    stop_timeout_seconds: Seconds = 60.0
    limits: MigrationLimits = Field(default_factory=MigrationLimits)
    resume: HostTaskState | None = Field(None, description="internal: handed on by "
                                                           "continue-as-new; never set it")

    def resources(self) -> list[str]:
        return [host_resource(self.host)]


class ActivateHostRequest(TaskRequest):
    """``taskomatic host activate NAME``: back in service; moved VMs keep their origin."""

    host: Name

    def resources(self) -> list[str]:
        return [host_resource(self.host)]


class RestoreHostRequest(TaskRequest):
    """``taskomatic host restore NAME``: migrate the VMs whose origin is that host back to it."""

    host: Name
    parallel: Annotated[int, Field(ge=1, le=1_000)] = 5
    batch: Annotated[int, Field(ge=1, le=1_000)] = 50
    limits: MigrationLimits = Field(default_factory=MigrationLimits)
    resume: HostTaskState | None = Field(None, description="internal: handed on by "
                                                           "continue-as-new; never set it")

    def resources(self) -> list[str]:
        return [host_resource(self.host)]


# --- activity inputs and outputs -----------------------------------------------------------------


class HostRef(Model):
    """A host as an activity needs it: name, libvirt URI, migration URI."""

    name: str
    uri: str
    migration_uri: str | None = None


class HostInfo(HostRef):
    state: HostState

    @property
    def detail(self) -> str:
        return f"{self.name} is {self.state}"


class MigrateDomainInput(Model):
    name: str
    source: HostRef
    destination: HostRef
    limits: MigrationLimits
    save_dir: str | None = Field(None, description="cold moves: the worker's setting if unset")


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


class HostNameInput(Model):
    host: str


class BeginMaintenanceResult(Model):
    host: str
    uri: str
    migration_uri: str | None = None
    previous_state: HostState
    placed_tasks: list[str] = Field(
        default_factory=list, description="tasks holding reservations on the host at that commit")

    @property
    def detail(self) -> str:
        return (f"{self.host} in maintenance (was {self.previous_state}); "
                f"{len(self.placed_tasks)} tasks already placed there")


class SetHostStateInput(Model):
    """Apply one named transition of ``taskomatic.states`` to ``host``."""

    host: str
    transition: HostTransition

    @model_validator(mode="before")
    @classmethod
    def _from_target_state(cls, data: Any) -> Any:
        """An input recorded before transitions had names (``state`` plus ``allowed_from``, as a
        task started before an upgrade still sends) becomes the transition it meant."""
        if isinstance(data, dict) and "transition" not in data and "state" in data:
            data = dict(data)
            state = HostState(data.pop("state"))
            allowed_from = [HostState(s) for s in data.pop("allowed_from", None) or []]
            data["transition"] = transition_to(state, allowed_from)
        return data


class HostStateResult(Model):
    """What a host transition did: ``host`` went from ``previous_state`` to ``state`` (the same
    when it was already there: ``detail`` then says "already …")."""

    host: str
    state: HostState
    previous_state: HostState
    detail: str


class PlanInput(Model):
    """The clear-host dry run: where placement would put each of ``vms`` if ``host`` were
    cleared now."""

    host: str
    vms: list[str]


class PlannedMove(Model):
    """One VM of a dry run: its ``destination``, or None and the ``reason`` it has none."""

    vm: str
    destination: str | None
    reason: str | None = None


class MovePlan(Model):
    moves: list[PlannedMove]

    @property
    def detail(self) -> str:
        placed = sum(1 for m in self.moves if m.destination)
        return f"{placed} of {len(self.moves)} VMs have a destination"


class OriginVmsInput(Model):
    host: str
    exclude: list[str] = Field(default_factory=list)


class VmNames(Model):
    names: list[str]

    @property
    def detail(self) -> str:
        return f"{len(self.names)} VMs"


class MigrationProgressSignal(Model):
    percent: float
    detail: str


# --- results and progress -----------------------------------------------------------------


class VmMoveOutcome(Model):
    vm: str
    outcome: Literal["moved", "already moved", "failed", "stopped", "not managed"]
    destination: str | None = None
    reason: str | None = None


class HostTaskProgress(Model):
    """Answer of ClearHost's and RestoreHost's ``moves`` query."""

    host: str
    moved: int = 0
    in_flight: int = 0
    remaining: int = 0
    failed: int = 0
    eta_seconds: float | None = Field(None, description="from workflow time, not a wall clock")
    in_flight_vms: list[str] = Field(default_factory=list)


class HostTaskState(Model):
    """What a ClearHost/RestoreHost run hands on to its next run (continue-as-new)."""

    source: HostRef | None = Field(None, description="set once maintenance was entered")
    run: int = 1
    outcomes: list[VmMoveOutcome] = Field(default_factory=list)
    busy_seconds: float = Field(0.0, description="sum of finished migrations' durations")
    remaining: int = Field(0, description="VMs left when the previous run handed over")


class HostTaskResult(Model):
    task_id: str
    kind: str
    host: str
    state: HostState | None
    dry_run: bool = False
    plan: list[PlannedMove] = Field(default_factory=list)
    outcomes: list[VmMoveOutcome] = Field(default_factory=list)
    runs: int = 1

    @property
    def failed(self) -> list[VmMoveOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]


ClearHostRequest.model_rebuild()
RestoreHostRequest.model_rebuild()
