"""The PostgreSQL inventory: hosts, capacity reservations, VM rows, migrations.

Runs against the session's real database. Auto-placement considers every 'up' host in it, so tests
of auto-placement first take every other host out of service (``only_hosts_up``).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

import psycopg2
import pytest
from helpers import app_error, force_host_state, host_row_locked, only_hosts_up, run_together
from temporalio.exceptions import ApplicationError

from activities.vms import InventoryActivities
from conftest import Lab
from taskomatic import inventory
from taskomatic.errors import ErrorType
from taskomatic.inventory.db import (
    Database,
    drop_database,
    ensure_database,
    migrations,
    upgrade,
    with_dbname,
)
from taskomatic.models import (
    HostRecord,
    HostState,
    LookupVmInput,
    RecordVmInput,
    ReleaseCapacityInput,
    RemoveVmInput,
    Reservation,
    ReserveCapacityInput,
    SetHostStateInput,
    VmState,
)
from taskomatic.states import HostTransition

T = TypeVar("T")


def task() -> str:
    return f"task-{uuid.uuid4().hex[:12]}"


def reserve(db: Database, vm: str, *, host: str | None = None, vcpus: int = 1,
            memory_mib: int = 64, task_id: str | None = None) -> Reservation:
    return inventory.reserve_capacity(db, ReserveCapacityInput(
        task_id=task_id or task(), vm_name=vm, vcpus=vcpus, memory_mib=memory_mib, host=host))


def record(db: Database, res: Reservation, *, vm_uuid: str | None = None,
           state: VmState = VmState.SHUTOFF) -> RecordVmInput:
    inp = RecordVmInput(task_id=res.task_id, name=res.vm_name, uuid=vm_uuid or str(uuid.uuid4()),
                        host=res.host, vcpus=res.vcpus, memory_mib=res.memory_mib, state=state)
    inventory.record_vm(db, inp)
    return inp


def usage(db: Database, host: str) -> tuple[int, int, int, int, int]:
    """(used vCPUs, used MiB, reserved vCPUs, reserved MiB, VM count) of a host."""
    rec = inventory.get_host(db, host)
    assert rec is not None
    return (rec.used_vcpus, rec.used_memory_mib, rec.reserved_vcpus, rec.reserved_memory_mib,
            rec.vm_count)


def lined_up(url: str, hosts: list[str], n: int, fn: Callable[[int], T]
             ) -> list[T | BaseException]:
    """Run ``fn(0) .. fn(n-1)`` concurrently, all first blocked behind the row locks of ``hosts``
    (held by another session) and then released together: maximal, repeatable contention."""
    with ExitStack() as locks, ThreadPoolExecutor(max_workers=1) as starter:
        waits = [locks.enter_context(host_row_locked(url, h)) for h in hosts]
        pending = starter.submit(run_together, n, fn)
        waits[0](n)
        locks.close()
        return pending.result(timeout=60)


def refused(err: BaseException, kind: ErrorType, field: str | None) -> ApplicationError:
    app, info = app_error(err)
    assert (app.type, info.type, info.field) == (kind.value, kind, field), info
    assert app.non_retryable is True
    return app


# --- hosts -----------------------------------------------------------------------------------


def test_add_host_again_is_a_noop(lab: Lab, db: Database) -> None:
    spec = lab.host(vcpus=6, memory_mib=3000)
    again, created = inventory.add_host(db, spec)
    assert created is False
    assert again == HostRecord(name=spec.name, uri=spec.uri, state=HostState.UP, vcpus=6,
                               memory_mib=3000, cluster=again.cluster, hypervisor_type="test")
    assert again.cluster in ("default", "default-test")  # the default cluster of its type
    assert [h.name for h in inventory.list_hosts(db)].count(spec.name) == 1


def test_add_host_with_a_taken_name_is_refused_on_name(lab: Lab, db: Database) -> None:
    spec = lab.host()
    other = spec.model_copy(update={"uri": spec.uri + ".other"})
    with pytest.raises(ApplicationError) as caught:
        inventory.add_host(db, other)
    err = refused(caught.value, ErrorType.INVALID_REQUEST, "name")
    assert spec.uri in err.message
    kept = inventory.get_host(db, spec.name)
    assert kept is not None and kept.uri == spec.uri


def test_add_host_with_a_taken_uri_is_refused_on_uri(lab: Lab, db: Database) -> None:
    spec = lab.host()
    other = spec.model_copy(update={"name": spec.name + "-bis"})
    with pytest.raises(ApplicationError) as caught:
        inventory.add_host(db, other)
    err = refused(caught.value, ErrorType.INVALID_REQUEST, "uri")
    assert spec.name in err.message
    assert inventory.get_host(db, other.name) is None


# --- reservations ----------------------------------------------------------------------------


def test_host_transitions_follow_the_table(lab: Lab, db: Database) -> None:
    name = lab.host().name

    def step(transition: HostTransition) -> str:
        return inventory.set_host_state(db, name, transition).detail

    def refused_from(transition: HostTransition) -> str:
        with pytest.raises(ApplicationError) as caught:
            inventory.set_host_state(db, name, transition)
        return refused(caught.value, ErrorType.INVALID_OPERATION, "host").message

    assert step(HostTransition.CONFIRM_UP) == f"{name} already up"
    assert refused_from(HostTransition.END_MAINTENANCE) == (
        f"host: host {name!r} is up; expected one of maintenance, maintenance_failed")
    assert inventory.begin_maintenance(db, name).previous_state == HostState.UP
    assert refused_from(HostTransition.CONFIRM_UP) == (
        f"host: host {name!r} is maintenance; expected one of up")
    assert step(HostTransition.FAIL_MAINTENANCE) == f"{name} maintenance → maintenance_failed"
    assert step(HostTransition.FAIL_MAINTENANCE) == f"{name} already maintenance_failed"
    assert step(HostTransition.MARK_DOWN) == f"{name} maintenance_failed → down"
    with pytest.raises(ApplicationError) as caught:
        inventory.begin_maintenance(db, name)
    assert refused(caught.value, ErrorType.HOST_NOT_AVAILABLE, "host").message == (
        f"host: host {name!r} is down: its VMs cannot be reached to move them")
    assert step(HostTransition.ACTIVATE) == f"{name} down → up"


@pytest.mark.parametrize(("state", "allowed_from", "transition"), [
    (HostState.MAINTENANCE_FAILED, [HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED],
     HostTransition.FAIL_MAINTENANCE),
    (HostState.MAINTENANCE, [HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED],
     HostTransition.END_MAINTENANCE),
    (HostState.UP, [], HostTransition.ACTIVATE),
    (HostState.UP, [HostState.UP], HostTransition.CONFIRM_UP),
])
def test_a_host_state_input_recorded_before_the_upgrade_means_its_transition(
        state: HostState, allowed_from: list[HostState], transition: HostTransition) -> None:
    recorded = {"host": "h", "state": state.value, "allowed_from": [s.value for s in allowed_from]}
    assert SetHostStateInput.model_validate(recorded) == SetHostStateInput(
        host="h", transition=transition)


def test_reserve_is_idempotent_per_task(lab: Lab, db: Database) -> None:
    host = lab.host(vcpus=8, memory_mib=4096)
    tid, vm = task(), lab.vm_name("idem")
    first = reserve(db, vm, host=host.name, vcpus=2, memory_mib=512, task_id=tid)
    assert first == Reservation(task_id=tid, vm_name=vm, host=host.name, host_uri=host.uri,
                                vcpus=2, memory_mib=512)
    # A retry gets the same reservation back, even if it asks differently.
    assert reserve(db, vm, host=host.name, vcpus=2, memory_mib=512, task_id=tid) == first
    assert reserve(db, vm, vcpus=4, memory_mib=1024, task_id=tid) == first
    assert usage(db, host.name) == (0, 0, 2, 512, 0)


@pytest.fixture
def big_pool(database_url: str) -> Iterator[Database]:
    """A pool larger than the 40 threads below (the shared one has 32: see the pool test)."""
    database = Database(database_url, max_connections=48)
    yield database
    database.close()


def test_40_concurrent_reservations_never_overcommit(lab: Lab, big_pool: Database) -> None:
    host = lab.host(vcpus=10, memory_mib=640)  # room for exactly 10 of 1 vCPU / 64 MiB
    results = lined_up(big_pool.url, [host.name], 40,
                       lambda i: reserve(big_pool, lab.vm_name(f"c{i}"), host=host.name))
    won = [r for r in results if isinstance(r, Reservation)]
    lost = [r for r in results if not isinstance(r, Reservation)]
    assert len(won) == 10, Counter(type(r).__name__ for r in results)
    assert {r.host for r in won} == {host.name}
    assert len({r.vm_name for r in won}) == 10
    for err in lost:
        refused(err, ErrorType.NO_CAPACITY, "host")
    assert usage(big_pool, host.name) == (0, 0, 10, 640, 0)


def test_a_full_connection_pool_gives_a_typed_error_or_waits(db: Database) -> None:
    """The worker runs 64 activity threads (Settings.activity_threads) over a 32-connection pool
    (get_database), so a burst of database activities can find the pool empty. That must surface
    as a typed, retryable DatabaseUnavailable (or wait for a connection), never a raw PoolError."""
    small = Database(db.url, max_connections=2)
    holding, release = threading.Barrier(3), threading.Event()

    def hold(_i: int) -> None:
        with small.transaction() as cur:
            cur.execute("SELECT 1")
            holding.wait(timeout=10)
            release.wait(timeout=10)

    holders = threading.Thread(target=lambda: run_together(2, hold))
    holders.start()
    try:
        holding.wait(timeout=10)  # both pool connections are now checked out
        try:
            with small.transaction() as cur:
                cur.execute("SELECT 1")
        except ApplicationError as err:
            assert err.type == ErrorType.DATABASE_UNAVAILABLE.value
            assert err.non_retryable is False
        except psycopg2.Error as err:
            pytest.fail(f"a full pool leaked an untyped {type(err).__module__}."
                        f"{type(err).__name__}: {err}")
    finally:
        release.set()
        holders.join()
        small.close()


@pytest.mark.parametrize("state", [HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED,
                                   HostState.DOWN])
def test_reserving_on_a_host_out_of_service_is_refused(lab: Lab, db: Database,
                                                       state: HostState) -> None:
    host = lab.host()
    force_host_state(db, host.name, state)
    with pytest.raises(ApplicationError) as caught:
        reserve(db, lab.vm_name("m"), host=host.name)
    err = refused(caught.value, ErrorType.HOST_NOT_AVAILABLE, "host")
    assert state.value in err.message
    assert usage(db, host.name) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("state", [HostState.MAINTENANCE, HostState.MAINTENANCE_FAILED,
                                   HostState.DOWN])
def test_auto_placement_skips_hosts_out_of_service(lab: Lab, db: Database,
                                                   state: HostState) -> None:
    busy = lab.host(1, vcpus=4, memory_mib=1024)
    idle = lab.host(2, vcpus=64, memory_mib=65536)  # emptier and bigger: it would win if up
    reserve(db, lab.vm_name("load"), host=busy.name, memory_mib=512)
    force_host_state(db, idle.name, state)
    with only_hosts_up(db, [busy.name]):
        placed = [reserve(db, lab.vm_name(f"a{i}")).host for i in range(3)]
    assert placed == [busy.name] * 3
    assert usage(db, idle.name) == (0, 0, 0, 0, 0)


def test_auto_placement_without_a_host_in_service_is_no_capacity(lab: Lab, db: Database) -> None:
    host = lab.host()
    force_host_state(db, host.name, HostState.MAINTENANCE)
    with only_hosts_up(db, []), pytest.raises(ApplicationError) as caught:
        reserve(db, lab.vm_name("none"))
    refused(caught.value, ErrorType.NO_CAPACITY, "host")


def test_auto_placement_picks_the_least_loaded_host(lab: Lab, db: Database) -> None:
    a = lab.host(1, vcpus=8, memory_mib=4096)
    b = lab.host(2, vcpus=8, memory_mib=4096)
    c = lab.host(3, vcpus=16, memory_mib=16384)
    reserve(db, lab.vm_name("la"), host=a.name, memory_mib=2048)  # a: 50% of memory
    reserve(db, lab.vm_name("lb"), host=b.name, memory_mib=1024)  # b: 25%
    reserve(db, lab.vm_name("lc"), host=c.name, memory_mib=6144)  # c: 37.5%
    with only_hosts_up(db, [a.name, b.name, c.name]):
        first = reserve(db, lab.vm_name("p1"), memory_mib=512)  # b goes to 37.5%: tie with c
        second = reserve(db, lab.vm_name("p2"), memory_mib=512)  # tie: c has lower vCPU load
        third = reserve(db, lab.vm_name("p3"), memory_mib=512)  # b 37.5% < c 40.6%
    assert [first.host, second.host, third.host] == [b.name, c.name, b.name]
    assert usage(db, b.name)[3] == 2048
    assert usage(db, c.name)[3] == 6656


def test_auto_placement_passes_over_a_host_too_small(lab: Lab, db: Database) -> None:
    small = lab.host(1, vcpus=2, memory_mib=1024)  # empty, but cannot fit 4 vCPUs
    big = lab.host(2, vcpus=16, memory_mib=8192)
    reserve(db, lab.vm_name("load"), host=big.name, vcpus=2, memory_mib=4096)
    with only_hosts_up(db, [small.name, big.name]):
        assert reserve(db, lab.vm_name("wide"), vcpus=4, memory_mib=256).host == big.name
        with pytest.raises(ApplicationError) as caught:
            reserve(db, lab.vm_name("huge"), vcpus=32, memory_mib=256)
    refused(caught.value, ErrorType.NO_CAPACITY, "memory_mib")


def test_a_name_taken_by_a_vm_is_refused(lab: Lab, db: Database) -> None:
    host = lab.host()
    vm = lab.vm_name("taken")
    record(db, reserve(db, vm, host=host.name))
    with pytest.raises(ApplicationError) as caught:
        reserve(db, vm, host=host.name)
    err = refused(caught.value, ErrorType.DUPLICATE_VM, "name")
    assert host.name in err.message
    with pytest.raises(ApplicationError) as caught:
        inventory.check_new_vm(db, vm, None)
    refused(caught.value, ErrorType.DUPLICATE_VM, "name")
    assert usage(db, host.name) == (1, 64, 0, 0, 1)


def test_a_name_reserved_by_another_task_is_refused(lab: Lab, db: Database) -> None:
    host = lab.host()
    vm = lab.vm_name("held")
    holder = reserve(db, vm, host=host.name)
    with pytest.raises(ApplicationError) as caught:
        reserve(db, vm, host=host.name)
    err = refused(caught.value, ErrorType.DUPLICATE_VM, "name")
    assert holder.task_id in err.message
    with pytest.raises(ApplicationError) as caught:
        inventory.check_new_vm(db, vm, host.name)
    refused(caught.value, ErrorType.DUPLICATE_VM, "name")
    assert usage(db, host.name) == (0, 0, 1, 64, 0)


@pytest.mark.parametrize("spread", [False, True], ids=["one-host", "two-hosts"])
def test_10_concurrent_reservations_of_one_name_have_one_winner(lab: Lab, db: Database,
                                                                spread: bool) -> None:
    """With two hosts the tasks lock different host rows, so only the name's uniqueness holds."""
    hosts = [lab.host(1), lab.host(2)] if spread else [lab.host(1)]
    vm = lab.vm_name("race")
    results = lined_up(db.url, [h.name for h in hosts], 10,
                       lambda i: reserve(db, vm, host=hosts[i % len(hosts)].name))
    won = [r for r in results if isinstance(r, Reservation)]
    assert len(won) == 1, results
    for err in results:
        if not isinstance(err, Reservation):
            refused(err, ErrorType.DUPLICATE_VM, "name")
    assert sum(usage(db, h.name)[2] for h in hosts) == 1


def test_concurrent_retries_of_one_task_get_its_one_reservation(lab: Lab, db: Database) -> None:
    """Temporal may run an activity again while a timed-out attempt still runs: every attempt
    of the same task must get the task's reservation, not a DuplicateVm against itself.

    The attempts are lined up behind the host's row lock, as happens when they overlap."""
    host = lab.host()
    tid, vm = task(), lab.vm_name("retry")
    results = lined_up(db.url, [host.name], 4,
                       lambda _i: reserve(db, vm, host=host.name, task_id=tid))
    assert all(isinstance(r, Reservation) for r in results), Counter(
        getattr(r, "type", type(r).__name__) for r in results)
    assert len({r.model_dump_json() for r in results if isinstance(r, Reservation)}) == 1
    assert usage(db, host.name) == (0, 0, 1, 64, 0)


def test_unknown_host_is_refused_on_host(db: Database) -> None:
    ghost = f"nohost-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ApplicationError) as caught:
        reserve(db, "vm-unknown-host", host=ghost)
    assert ghost in refused(caught.value, ErrorType.UNKNOWN_HOST, "host").message
    with pytest.raises(ApplicationError) as caught:
        inventory.check_new_vm(db, "vm-unknown-host", ghost)
    refused(caught.value, ErrorType.UNKNOWN_HOST, "host")
    with pytest.raises(ApplicationError) as caught:
        inventory.record_vm(db, RecordVmInput(task_id=task(), name="vm-unknown-host",
                                              uuid=str(uuid.uuid4()), host=ghost, vcpus=1,
                                              memory_mib=64, state=VmState.SHUTOFF))
    refused(caught.value, ErrorType.UNKNOWN_HOST, "host")
    assert inventory.get_vm(db, "vm-unknown-host") is None


def test_release_is_idempotent(lab: Lab, db: Database) -> None:
    host = lab.host()
    res = reserve(db, lab.vm_name("rel"), host=host.name, vcpus=3, memory_mib=300)
    acts = InventoryActivities(db)
    first = acts.release_capacity(ReleaseCapacityInput(task_id=res.task_id))
    assert (first.released, first.detail) == (True, f"released 3 vCPUs / 300 MiB on {host.name}")
    second = acts.release_capacity(ReleaseCapacityInput(task_id=res.task_id))
    assert (second.released, second.detail) == (False, "no reservation held")
    assert inventory.release_capacity(db, res.task_id) is None
    assert usage(db, host.name) == (0, 0, 0, 0, 0)
    # The name is free again.
    assert reserve(db, res.vm_name, host=host.name).vm_name == res.vm_name


# --- VM rows ---------------------------------------------------------------------------------


def test_record_vm_turns_the_reservation_into_a_vm(lab: Lab, db: Database) -> None:
    host = lab.host()
    res = reserve(db, lab.vm_name("rec"), host=host.name, vcpus=2, memory_mib=256)
    assert usage(db, host.name) == (0, 0, 2, 256, 0)
    inp = RecordVmInput(task_id=res.task_id, name=res.vm_name, uuid=str(uuid.uuid4()),
                        host=host.name, vcpus=2, memory_mib=256, state=VmState.RUNNING)
    vm = InventoryActivities(db).record_vm(inp)
    assert (vm.name, vm.uuid, vm.host, vm.vcpus, vm.memory_mib, vm.state) == (
        res.vm_name, inp.uuid, host.name, 2, 256, VmState.RUNNING)
    assert usage(db, host.name) == (2, 256, 0, 0, 1)
    assert inventory.release_capacity(db, res.task_id) is None
    placement = inventory.get_vm(db, res.vm_name)
    assert placement is not None and placement.host_uri == host.uri
    # The step's result is the VM's row, and whom a release in its transaction woke: nobody.
    assert (placement.vm.model_dump(), vm.woken) == (vm.model_dump(exclude={"woken"}), [])


def test_record_vm_again_only_refreshes_the_state(lab: Lab, db: Database) -> None:
    host = lab.host()
    res = reserve(db, lab.vm_name("rerec"), host=host.name)
    inp = record(db, res, state=VmState.SHUTOFF)
    again = inventory.record_vm(db, inp.model_copy(update={"state": VmState.RUNNING}))
    assert (again.uuid, again.state) == (inp.uuid, VmState.RUNNING)
    assert [v.name for v in inventory.list_vms(db, host.name)] == [res.vm_name]
    assert usage(db, host.name) == (1, 64, 0, 0, 1)


def test_record_vm_with_another_uuid_is_refused(lab: Lab, db: Database) -> None:
    host = lab.host()
    res = reserve(db, lab.vm_name("clash"), host=host.name)
    first = record(db, res)
    other = reserve(db, lab.vm_name("other"), host=host.name)
    with pytest.raises(ApplicationError) as caught:
        inventory.record_vm(db, first.model_copy(update={"uuid": str(uuid.uuid4()),
                                                         "task_id": other.task_id}))
    refused(caught.value, ErrorType.DUPLICATE_VM, "name")
    kept = inventory.get_vm(db, res.vm_name)
    assert kept is not None and kept.vm.uuid == first.uuid
    # The failed finalize rolled back: the other task still holds its reservation.
    assert inventory.release_capacity(db, other.task_id) == other


def test_readers_never_see_a_half_recorded_vm(lab: Lab, db: Database) -> None:
    host = lab.host(vcpus=32, memory_mib=4096)
    held = [reserve(db, lab.vm_name(f"atom{i}"), host=host.name) for i in range(20)]
    seen: set[tuple[int, int]] = set()
    done = threading.Event()

    def finalize() -> None:
        try:
            for res in held:
                record(db, res)
        finally:
            done.set()

    writer = threading.Thread(target=finalize)
    writer.start()
    while not done.is_set():
        used, used_mib, reserved, reserved_mib, count = usage(db, host.name)
        seen.add((used + reserved, used_mib + reserved_mib))
        assert used == count
    writer.join()
    assert seen <= {(20, 20 * 64)}
    assert usage(db, host.name) == (20, 20 * 64, 0, 0, 20)


def test_remove_vm_frees_capacity(lab: Lab, db: Database) -> None:
    host = lab.host(vcpus=2, memory_mib=1024)
    vm = lab.vm_name("rm")
    record(db, reserve(db, vm, host=host.name, vcpus=2, memory_mib=1024))
    with pytest.raises(ApplicationError) as caught:
        reserve(db, lab.vm_name("next"), host=host.name, vcpus=1, memory_mib=64)
    refused(caught.value, ErrorType.NO_CAPACITY, "host")
    acts = InventoryActivities(db)
    first = acts.remove_vm(RemoveVmInput(name=vm))
    assert (first.changed, first.detail) == (True, "removed from inventory")
    second = acts.remove_vm(RemoveVmInput(name=vm))
    assert (second.changed, second.detail) == (False, "already absent from inventory")
    assert usage(db, host.name) == (0, 0, 0, 0, 0)
    with pytest.raises(ApplicationError) as caught:
        acts.lookup_vm(LookupVmInput(name=vm))
    refused(caught.value, ErrorType.UNKNOWN_VM, "name")
    assert reserve(db, lab.vm_name("next"), host=host.name, vcpus=2, memory_mib=1024).host == (
        host.name)


# --- migrations ------------------------------------------------------------------------------


def test_upgrade_again_applies_nothing(db: Database) -> None:
    assert upgrade(db.url) == []
    assert upgrade(db.url) == []
    with db.transaction() as cur:
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        rows = [(r["version"], r["name"]) for r in cur.fetchall()]
    assert rows == [(version, name) for version, name, _sql in migrations()]


@pytest.fixture
def fresh_urls(database_url: str) -> Iterator[Callable[[], str]]:
    """Makes throwaway databases on the session's server; drops them afterwards."""
    made: list[str] = []

    def make() -> str:
        url = with_dbname(database_url, f"taskomatic_fresh_{uuid.uuid4().hex[:8]}")
        made.append(url)
        assert ensure_database(url) is True
        assert ensure_database(url) is False
        return url

    yield make
    for url in made:
        drop_database(url)


def test_two_concurrent_upgrades_of_a_fresh_database_both_succeed(
        fresh_urls: Callable[[], str]) -> None:
    """Done on three fresh databases, so a race between the two upgraders shows up."""
    names = [name for _v, name, _sql in migrations()]
    for _round in range(3):
        url = fresh_urls()

        def upgrader(_i: int, url: str = url) -> list[str]:
            return upgrade(url)

        results = run_together(2, upgrader)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors
        applied = [n for r in results if isinstance(r, list) for n in r]
        assert sorted(applied) == sorted(names)  # each migration applied exactly once
        assert upgrade(url) == []
        conn = psycopg2.connect(url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM schema_migrations")
                assert cur.fetchone() == (len(names),)
                cur.execute("SELECT count(*) FROM hosts")
                assert cur.fetchone() == (0,)
        finally:
            conn.close()
