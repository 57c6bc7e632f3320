"""Models of hosts: registration and inventory rows, and the host tasks (clear a host into
maintenance, activate it, restore its VMs) with their activities' inputs and outputs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from taskomatic.models.base import LibvirtUri, MigrationUri, Model, Name, TaskRequest, host_resource
from taskomatic.models.migration import HostRef, MigrationLimits, Seconds
from taskomatic.states import HostState, HostTransition, transition_to


class HostSpec(Model):
    """``taskomatic host add``: a hypervisor, its cluster and the capacity the engine may place
    on it: ``vcpus`` / ``memory_mib`` when given, else what libvirt reports (``getInfo``) times
    the cluster's overcommit ratios."""

    name: Name
    uri: LibvirtUri
    cluster: Name | None = Field(
        None, description="None: the default cluster of the host's hypervisor type")
    vcpus: Annotated[int, Field(ge=1, le=65_536)] | None = Field(
        None, description="explicit capacity; None: libvirt's CPUs times the vCPU overcommit")
    memory_mib: Annotated[int, Field(ge=64, le=64 * 1024 * 1024)] | None = Field(
        None, description="explicit capacity; None: libvirt's memory times the memory overcommit")
    migration_uri: MigrationUri | None = Field(
        None, description="where this host receives live migrations, e.g. tcp://10.0.0.2")


class HostRecord(Model):
    """A host as the inventory has it. ``vcpus`` / ``memory_mib`` are the capacity placement
    may use: the explicit values of ``host add``, else ``cpus`` / ``physical_memory_mib`` (what
    libvirt reported) times the cluster's overcommit ratios."""

    name: str
    uri: str
    state: HostState
    cluster: str = "default"
    hypervisor_type: str = Field("", description="its cluster's libvirt driver (test, qemu)")
    cpu_model: str | None = None
    cpus: int | None = Field(None, description="physical CPUs libvirt reported (getInfo)")
    physical_memory_mib: int | None = Field(None, description="memory libvirt reported, MiB")
    state_reason: str | None = Field(None, description="why the host monitor set the state "
                                                       "(non_responsive: what it saw)")
    migration_uri: str | None = None
    hypervisor_id: str | None = Field(
        None, description="the hypervisor's own identity (its host UUID; test driver: its "
                          "host file), None if registered without reading it")
    vcpus: int
    memory_mib: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    reserved_vcpus: int = 0
    reserved_memory_mib: int = 0
    vm_count: int = 0
    pools: list[str] = Field(
        default_factory=list, description="the storage pools this host sees (started there, "
                                          "``pool_hosts``), by name")


class ClearHostRequest(TaskRequest):
    """``taskomatic host clear NAME [--dry-run] [--stop-unmigratable]``."""

    host: Name
    dry_run: bool = False
    stop_unmigratable: bool = False
    copy_storage: bool = Field(False, description="move VMs on local pools with a storage copy")
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


class HostInfo(HostRef):
    state: HostState

    @property
    def detail(self) -> str:
        return f"{self.name} is {self.state}"


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
    copy_storage: bool = False


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


# The requests name HostTaskState, defined after them.
ClearHostRequest.model_rebuild()
RestoreHostRequest.model_rebuild()
