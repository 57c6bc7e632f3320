"""Every verb decides from what the hypervisor says now (issue 12), on libvirt test-driver hosts.

- A VM is never "absent" merely because it is not where the inventory puts it: the domain steps
  refuse (``DomainElsewhere``) naming the host that has it, so no live guest is orphaned; a VM
  that is nowhere stays an idempotent no-op.
- Every verb meets every power state libvirt reports (running, paused, shutting down, shut off,
  crashed, suspended to memory): it acts, or refuses naming the state; what it reports is what
  libvirt then says.
- Destructive storage steps ask libvirt who uses the storage (case 12), not only the inventory.
- ``reconcile`` records a VM where it really runs (location drift), never marks it unknown when
  another host has it.

Invariants are checked against libvirt itself.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from helpers import app_error, force_host_state
from storage_helpers import libvirt_pools, libvirt_volumes, pool_name, pool_path

from activities.storage import StorageActivities
from activities.vms import DomainActivities
from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.errors import ErrorType
from taskomatic.hypervisor import Hypervisors, power_state
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import (
    CreatePoolRequest,
    CreateVmRequest,
    CreateVolumeRequest,
    DestroyPoolRequest,
    DestroyVmRequest,
    DiskSpec,
    DomainRef,
    DomainReport,
    DomainSpec,
    HostSpec,
    HostState,
    PoolRef,
    PoolSpec,
    PoolType,
    ReconcileReport,
    ReconcileRequest,
    RecordVmInput,
    StopVmRequest,
    VmState,
    VolumeRef,
    VolumeSpec,
)
from taskomatic.units import MIB

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


@pytest.fixture
def domains(hypervisors: Hypervisors, db: Database) -> DomainActivities:
    return DomainActivities(hypervisors, db)


@pytest.fixture
def storage(hypervisors: Hypervisors, db: Database) -> StorageActivities:
    return StorageActivities(hypervisors, db)


def ref_for(host: HostSpec, name: str) -> DomainRef:
    return DomainRef(host=host.name, uri=host.uri, name=name)


def define(lab: Lab, host: HostSpec, name: str, *, uuid_: str | None = None, start: bool = True,
           disks: list[DiskSpec] | None = None, files: list[str] | None = None) -> str:
    """A domain made behind taskomatic's back (``virsh define``); returns its UUID."""
    spec = DomainSpec(host=host.name, uri=host.uri, name=name, uuid=uuid_ or str(uuid.uuid4()),
                      vcpus=1, memory_mib=64, disks=disks or [])
    root = ET.fromstring(build_domain_xml(spec))
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    for i, path in enumerate(files or []):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "source", file=path)
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('q') + i)}", bus="virtio")
    dom = lab.hv.connection(host.uri).defineXML(ET.tostring(root, encoding="unicode"))
    if start:
        dom.create()
    return spec.uuid


def record(db: Database, host: HostSpec, name: str, vm_uuid: str,
           state: VmState = VmState.RUNNING) -> None:
    """The inventory's row of VM ``name``: on ``host``."""
    inventory.record_vm(db, RecordVmInput(task_id=f"t-{uuid.uuid4().hex[:8]}", name=name,
                                          uuid=vm_uuid, host=host.name, vcpus=1,
                                          memory_mib=64, state=state))


def move_behind_the_back(lab: Lab, name: str, source: HostSpec, dest: HostSpec) -> None:
    """Move a running domain as a move whose task died before recording it leaves it: same
    definition (UUID) running on ``dest``, gone from ``source``."""
    dom = lab.hv.connection(source.uri).lookupByName(name)
    xml = dom.XMLDesc()
    dom.destroy()
    dom.undefine()
    lab.hv.connection(dest.uri).defineXML(xml).create()


def states(lab: Lab, host: HostSpec) -> dict[str, VmState]:
    """name → power state, as libvirt says on ``host``."""
    return {d.name(): power_state(d) for d in lab.hv.connection(host.uri).listAllDomains()}


# --- 1. a VM is never absent merely because it is not where the inventory puts it ------------


ELSEWHERE_VERBS: dict[str, Callable[[DomainActivities, DomainRef], DomainReport]] = {
    "destroy": lambda a, r: a.destroy_domain(r),
    "undefine": lambda a, r: a.undefine_domain(r),
    "shutdown": lambda a, r: a.shutdown_domain(r),
    "start": lambda a, r: a.start_domain(r),
}


@pytest.mark.parametrize("verb", ELSEWHERE_VERBS)
def test_a_step_on_a_vm_running_elsewhere_refuses_naming_where(
        lab: Lab, db: Database, domains: DomainActivities, verb: str) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    name = lab.vm_name(f"away-{verb}")
    record(db, h1, name, define(lab, h2, name))
    with pytest.raises(Exception) as caught:
        ELSEWHERE_VERBS[verb](domains, ref_for(h1, name))
    err, info = app_error(caught.value)
    assert (info.type, info.retryable, info.vm) == (ErrorType.DOMAIN_ELSEWHERE, False, name)
    assert f"running on {h2.name}" in err.message
    assert states(lab, h2) == {name: VmState.RUNNING} and states(lab, h1) == {}


def test_a_vm_nowhere_is_absent_and_a_namesake_elsewhere_is_not_it(
        lab: Lab, db: Database, domains: DomainActivities) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    gone, namesake = lab.vm_name("gone"), lab.vm_name("namesake")
    for name in (gone, namesake):
        record(db, h1, name, str(uuid.uuid4()))
    define(lab, h2, namesake)  # the same name, another UUID: some other domain
    for name in (gone, namesake):
        assert domains.destroy_domain(ref_for(h1, name)).detail == "absent; nothing to power off"
        assert domains.undefine_domain(ref_for(h1, name)).detail == "already absent"
    assert states(lab, h2) == {namesake: VmState.RUNNING}


def test_a_host_that_cannot_be_asked_is_not_assumed_empty(
        lab: Lab, db: Database, domains: DomainActivities) -> None:
    h1 = lab.host(1)
    far = HostSpec(name=f"far-{lab.prefix}", uri=f"qemu+tcp://127.0.0.1:1/{lab.prefix}", vcpus=1,
                   memory_mib=1024)
    inventory.add_host(db, far)
    try:
        with pytest.raises(Exception) as caught:
            domains.destroy_domain(ref_for(h1, lab.vm_name("unsure")))
        err, info = app_error(caught.value)
        assert (info.type, info.retryable) == (ErrorType.HYPERVISOR_UNAVAILABLE, True)
        assert far.name in err.message
    finally:
        force_host_state(db, far.name, HostState.DOWN)
    assert domains.destroy_domain(ref_for(h1, lab.vm_name("unsure"))).changed is False


async def test_stop_and_destroy_refuse_a_vm_that_runs_elsewhere_and_reconcile_finds_it(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    """Case 2's aftermath: the move finished after its task was cancelled. ``vm stop --force``
    and ``vm destroy`` must not report success (the guest would run on with no row);
    ``reconcile`` records the VM where it runs, with its capacity; then stop works there."""
    h1, h2 = lab.host(1), lab.host(2)
    name = lab.vm_name("moved")
    await (await client.create_vm(CreateVmRequest(name=name, host=h1.name, vcpus=2,
                                                  memory_mib=256, start=True))).result()
    move_behind_the_back(lab, name, h1, h2)
    for request in (StopVmRequest(name=name, force=True), DestroyVmRequest(name=name)):
        task = await (client.stop_vm(request) if isinstance(request, StopVmRequest)
                      else client.destroy_vm(request))
        with pytest.raises(TaskError) as caught:
            await task.result()
        failure = caught.value.failure
        assert (failure.step, failure.error_type) == ("power off", "DomainElsewhere")
        assert f"running on {h2.name}" in failure.message
        assert states(lab, h2) == {name: VmState.RUNNING} and states(lab, h1) == {}
        found = inventory.get_vm(db, name)
        assert found is not None and found.vm.host == h1.name

    report: ReconcileReport = await (await client.submit(
        "Reconcile", ReconcileRequest(grace_seconds=30))).result()
    mine = [f for f in report.findings if f.subject == name]
    assert [(f.kind, f.repaired) for f in mine] == [("location_drift", True)], mine
    found = inventory.get_vm(db, name)
    assert found is not None and (found.vm.host, found.vm.state) == (h2.name, VmState.RUNNING)
    loads = {h.name: (h.used_vcpus, h.used_memory_mib) for h in inventory.list_hosts(db)}
    assert (loads[h1.name], loads[h2.name]) == ((0, 0), (2, 256))

    stopped = await (await client.stop_vm(StopVmRequest(name=name, force=True))).result()
    assert (stopped.host, stopped.state) == (h2.name, VmState.SHUTOFF)
    assert states(lab, h2) == {name: VmState.SHUTOFF}
    await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    assert states(lab, h2) == {} and inventory.get_vm(db, name) is None


# --- 2. every verb meets every power state -------------------------------------------------


RUNSTATES = {VmState.RUNNING: 1, VmState.PAUSED: 3, VmState.SHUTDOWN: 4, VmState.SHUTOFF: 5,
             VmState.CRASHED: 6, VmState.SUSPENDED: 7}


def host_with_domain_in(lab: Lab, db: Database, state: VmState, name: str) -> HostSpec:
    """A test-driver host whose one domain ``name`` starts in ``state`` (the test driver's
    ``<test:runstate>``: it cannot crash or suspend a guest to memory through the API)."""
    host = f"st{lab.prefix}-{RUNSTATES[state]}"
    uri = write_test_host(lab.dir, host, 4, 4096)
    path = uri.removeprefix("test://")
    node = ET.parse(path).getroot()
    ET.register_namespace("test", TEST_NS)
    spec = DomainSpec(host=host, uri=uri, name=name, uuid=str(uuid.uuid4()), vcpus=1,
                      memory_mib=64)
    dom = ET.fromstring(build_domain_xml(spec))
    ET.SubElement(dom, f"{{{TEST_NS}}}runstate").text = str(RUNSTATES[state])
    node.append(dom)
    ET.ElementTree(node).write(path, encoding="unicode")
    spec_host = HostSpec(name=host, uri=uri, vcpus=4, memory_mib=4096)
    inventory.add_host(db, spec_host)
    lab.hosts.append(spec_host)  # taken out of service after the test, like the lab's own
    assert states(lab, spec_host) == {name: state}
    return spec_host


ACT = "act"
# (verb, state) → what it must do: (detail, state libvirt then reports, changed), or a refusal
# (error type, words the message must name). Unlisted: undefine (always "undefined").
OUTCOMES: dict[tuple[str, VmState], tuple[Any, ...]] = {
    ("start", VmState.RUNNING): (ACT, "already running", VmState.RUNNING, False),
    ("start", VmState.PAUSED): (ACT, "resumed (was paused)", VmState.RUNNING, True),
    ("start", VmState.SHUTOFF): (ACT, "started", VmState.RUNNING, True),
    ("start", VmState.SHUTDOWN): (ErrorType.INVALID_OPERATION, "shutting down"),
    ("start", VmState.CRASHED): (ErrorType.INVALID_OPERATION, "crashed"),
    # The test driver cannot wake a guest suspended to memory (QEMU can: pMWakeup).
    ("start", VmState.SUSPENDED): (ErrorType.NOT_SUPPORTED, "suspended to memory"),
    ("shutdown", VmState.RUNNING): (ACT, "graceful shutdown requested", VmState.SHUTOFF, True),
    ("shutdown", VmState.PAUSED): (ErrorType.INVALID_OPERATION, "paused"),
    ("shutdown", VmState.SHUTOFF): (ACT, "already shut off", VmState.SHUTOFF, False),
    ("shutdown", VmState.SHUTDOWN): (ACT, "already shutting down", VmState.SHUTDOWN, False),
    ("shutdown", VmState.CRASHED): (ErrorType.INVALID_OPERATION, "crashed"),
    ("shutdown", VmState.SUSPENDED): (ErrorType.INVALID_OPERATION, "suspended to memory"),
    ("destroy", VmState.RUNNING): (ACT, "powered off", VmState.SHUTOFF, True),
    ("destroy", VmState.PAUSED): (ACT, "powered off (was paused)", VmState.SHUTOFF, True),
    ("destroy", VmState.SHUTOFF): (ACT, "already shut off", VmState.SHUTOFF, False),
    ("destroy", VmState.SHUTDOWN): (ACT, "powered off (was shutting down)", VmState.SHUTOFF,
                                    True),
    ("destroy", VmState.CRASHED): (ACT, "powered off (was crashed)", VmState.SHUTOFF, True),
    ("destroy", VmState.SUSPENDED): (ACT, "powered off (was suspended to memory)",
                                     VmState.SHUTOFF, True),
    **{("undefine", s): (ACT, "undefined", None, True) for s in RUNSTATES},
}
VERBS: dict[str, Callable[[DomainActivities, DomainRef], DomainReport]] = {
    "start": lambda a, r: a.start_domain(r),
    "shutdown": lambda a, r: a.shutdown_domain(r),
    "destroy": lambda a, r: a.destroy_domain(r),
    "undefine": lambda a, r: a.undefine_domain(r),
}


@pytest.mark.parametrize(("verb", "state"), list(OUTCOMES),
                         ids=[f"{v}-{s.value}" for v, s in OUTCOMES])
def test_every_verb_acts_or_refuses_naming_the_state(
        lab: Lab, db: Database, domains: DomainActivities, verb: str, state: VmState) -> None:
    name = lab.vm_name(f"{verb}-{state.value}")
    host = host_with_domain_in(lab, db, state, name)
    expected = OUTCOMES[(verb, state)]
    if expected[0] == ACT:
        _, detail, after, changed = expected
        report = VERBS[verb](domains, ref_for(host, name))
        assert (report.detail, report.state, report.changed) == (detail, after, changed)
        # What it reports is what libvirt says now.
        assert states(lab, host) == ({name: after} if after is not None else {})
    else:
        kind, words = expected
        with pytest.raises(Exception) as caught:
            VERBS[verb](domains, ref_for(host, name))
        err, info = app_error(caught.value)
        assert (info.type, info.retryable, info.vm, info.host) == (kind, False, name, host.name)
        assert f"it is {words}" in err.message
        assert states(lab, host) == {name: state}  # refused: nothing done


def test_a_paused_vm_is_resumed_by_start_and_a_stop_does_not_pretend(
        lab: Lab, db: Database, domains: DomainActivities) -> None:
    """The same through the API the test driver has: ``virsh suspend``."""
    host, name = lab.host(), lab.vm_name("paused")
    define(lab, host, name)
    lab.hv.connection(host.uri).lookupByName(name).suspend()
    with pytest.raises(Exception) as caught:
        domains.shutdown_domain(ref_for(host, name))
    assert app_error(caught.value)[1].type == ErrorType.INVALID_OPERATION
    assert states(lab, host) == {name: VmState.PAUSED}
    started = domains.start_domain(ref_for(host, name))
    assert (started.detail, started.state) == ("resumed (was paused)", VmState.RUNNING)
    assert states(lab, host) == {name: VmState.RUNNING}


# --- 3. destructive storage steps ask libvirt for users (case 12) ---------------------------


def _pool(lab: Lab, storage: StorageActivities, host: HostSpec, label: str) -> PoolRef:
    spec = PoolSpec(host=host.name, uri=host.uri, name=pool_name(lab, label),
                    uuid=str(uuid.uuid4()), type=PoolType.DIR, path=pool_path(lab, label))
    storage.define_pool(spec)
    storage.start_pool(spec)
    return PoolRef(**spec.model_dump(include={"host", "uri", "name", "uuid"}))


def _volume(storage: StorageActivities, pool: PoolRef, name: str) -> VolumeRef:
    ref = VolumeRef(host=pool.host, uri=pool.uri, pool=pool.name, name=name)
    storage.create_volume(VolumeSpec(**ref.model_dump(), capacity=64 * MIB))
    return ref


def _in_use(fn: Callable[[], object]) -> str:
    with pytest.raises(Exception) as caught:
        fn()
    err, info = app_error(caught.value)
    assert (info.type, info.retryable) == (ErrorType.STORAGE_IN_USE, False), err
    return err.message


def test_storage_a_guest_unknown_to_the_inventory_uses_is_never_destroyed(
        lab: Lab, storage: StorageActivities) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    pool = _pool(lab, storage, h1, "users")
    used, spare = _volume(storage, pool, "used.qcow2"), _volume(storage, pool, "spare.qcow2")
    guest = lab.vm_name("virsh")
    define(lab, h1, guest, disks=[DiskSpec(pool=pool.name, volume=used.name, format="qcow2",
                                           target="vda")])
    for step in (lambda: storage.delete_volume(used),
                 lambda: storage.delete_pool_volumes(pool),
                 lambda: storage.stop_pool(pool),
                 lambda: storage.undefine_pool(pool)):
        message = _in_use(step)
        assert f"{guest} (running) on {h1.name}" in message
    assert libvirt_volumes(lab, h1, pool.name) == ["spare.qcow2", "used.qcow2"]
    assert libvirt_pools(lab, h1)[pool.name][0] is True

    # A guest on another registered host with the volume's file as its disk (a dir pool's
    # files may be shared storage) counts too, shut off or not.
    lab.hv.connection(h1.uri).lookupByName(guest).destroy()
    lab.hv.connection(h1.uri).lookupByName(guest).undefine()
    path = lab.hv.connection(h1.uri).storagePoolLookupByName(pool.name) \
        .storageVolLookupByName(used.name).path()
    other = lab.vm_name("other")
    define(lab, h2, other, files=[path], start=False)
    assert f"{other} (shutoff) on {h2.name}" in _in_use(lambda: storage.delete_volume(used))
    assert f"{other} (shutoff) on {h2.name}" in _in_use(lambda: storage.delete_pool(pool))
    assert storage.delete_volume(spare).detail == "deleted"  # a volume nobody uses goes
    assert libvirt_volumes(lab, h1, pool.name) == ["used.qcow2"]
    lab.hv.connection(h2.uri).lookupByName(other).undefine()
    assert storage.delete_pool_volumes(pool).detail == "deleted 1 volume(s)"
    assert storage.undefine_pool(pool).detail == "undefined"


async def test_pool_destroy_delete_refuses_while_a_virsh_guest_uses_a_volume(
        client: TaskomaticClient, lab: Lab) -> None:
    """Case 12: ``pool destroy --delete`` with a running guest (defined with virsh, not in the
    inventory) using one of the pool's volumes."""
    host = lab.host()
    name = pool_name(lab, "case12")
    await (await client.create_pool(CreatePoolRequest(
        name=name, host=host.name, path=pool_path(lab, "case12")))).result()
    await (await client.create_volume(CreateVolumeRequest(pool=name, name="root.qcow2",
                                                          capacity="64MiB"))).result()
    guest = lab.vm_name("case12")
    define(lab, host, guest, disks=[DiskSpec(pool=name, volume="root.qcow2", format="qcow2",
                                             target="vda")])
    task = await client.destroy_pool(DestroyPoolRequest(name=name, delete=True))
    with pytest.raises(TaskError) as caught:
        await task.result()
    failure = caught.value.failure
    assert (failure.step, failure.error_type) == ("delete volumes", "StorageInUse")
    assert guest in failure.message
    assert libvirt_volumes(lab, host, name) == ["root.qcow2"]
    assert states(lab, host) == {guest: VmState.RUNNING}
    conn = lab.hv.connection(host.uri)
    conn.lookupByName(guest).destroy()
    conn.lookupByName(guest).undefine()
    await (await client.destroy_pool(DestroyPoolRequest(name=name, delete=True))).result()
    assert libvirt_pools(lab, host) == {}


# --- 4. reconcile repairs location drift ------------------------------------------------------


async def _reconcile(client: TaskomaticClient, *names: str) -> dict[str, tuple[str, bool, str]]:
    report: ReconcileReport = await (await client.submit(
        "Reconcile", ReconcileRequest(grace_seconds=30))).result()
    return {f.subject: (f.kind, f.repaired, f.detail) for f in report.findings
            if f.subject in names}


async def test_reconcile_records_a_vm_where_it_runs_and_never_calls_it_unknown_if_found(
        client: TaskomaticClient, lab: Lab, db: Database) -> None:
    h1, h2, h3, h4 = lab.host(1), lab.host(2), lab.host(3), lab.host(4)
    stale, twice, other, held, fled = (lab.vm_name(x) for x in ("stale", "twice", "other",
                                                                 "held", "fled"))
    # Running on h2, with a stale shut-off copy left on h1 (where the inventory has it).
    vm_uuid = define(lab, h1, stale, start=False)
    record(db, h1, stale, vm_uuid)
    define(lab, h2, stale, uuid_=vm_uuid)
    # Defined (shut off) on both h2 and h3, on neither where recorded: which is it?
    vm_uuid = str(uuid.uuid4())
    record(db, h1, twice, vm_uuid, VmState.SHUTOFF)
    define(lab, h2, twice, uuid_=vm_uuid, start=False)
    define(lab, h3, twice, uuid_=vm_uuid, start=False)
    # A namesake with another UUID on h2 is not the VM.
    record(db, h1, other, str(uuid.uuid4()))
    define(lab, h2, other)
    # A task holds this one: left alone.
    vm_uuid = str(uuid.uuid4())
    record(db, h1, held, vm_uuid)
    define(lab, h2, held, uuid_=vm_uuid)
    ordering.enqueue(db, f"holder-{lab.prefix}", "MigrateVm", {f"vm:{held}": 1})
    # Recorded on a host marked down (no comparison visits it), running on h3.
    vm_uuid = str(uuid.uuid4())
    record(db, h4, fled, vm_uuid)
    define(lab, h3, fled, uuid_=vm_uuid)
    force_host_state(db, h4.name, HostState.DOWN)
    try:
        found = await _reconcile(client, stale, twice, other, held, fled)
    finally:
        ordering.drop_closed(db, [f"holder-{lab.prefix}"])
    assert {k: v[:2] for k, v in found.items()} == {
        stale: ("location_drift", True), twice: ("location_drift", False),
        other: ("missing_domain", False), fled: ("location_drift", True)}
    assert "stale" in found[stale][2] and h1.name in found[stale][2]

    def row(name: str) -> tuple[str, VmState]:
        got = inventory.get_vm(db, name)
        assert got is not None
        return got.vm.host, got.vm.state
    assert row(stale) == (h2.name, VmState.RUNNING)
    assert row(twice) == (h1.name, VmState.SHUTOFF)  # not marked unknown: others have it
    assert row(other) == (h1.name, VmState.UNKNOWN)
    assert row(held) == (h1.name, VmState.RUNNING)
    assert row(fled) == (h3.name, VmState.RUNNING)
    assert states(lab, h2)[stale] == VmState.RUNNING  # reconcile changes no domain
    assert states(lab, h1) == {stale: VmState.SHUTOFF}

    again = await _reconcile(client, stale, held)
    assert stale not in again
    assert again[held][:2] == ("location_drift", True)  # once the task let go
    assert row(held) == (h2.name, VmState.RUNNING)

