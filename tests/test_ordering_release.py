"""A task's last inventory step releases the task's claims in its own transaction
(``inventory.ordering.finishing``, the ``release_task`` of the VM finalize steps): against the
session's real database. The workflow side (the patch, the wake signal from the workflow) is in
the recorded histories (``tests/histories/*.i16-release-with-last-step.json``) and the ordering
tests."""

from __future__ import annotations

import uuid

import pytest
from temporalio.exceptions import ApplicationError

from activities.vms import InventoryActivities
from conftest import Lab
from taskomatic import inventory
from taskomatic.inventory import ordering
from taskomatic.inventory.db import Database
from taskomatic.models import (
    RecordVmInput,
    RemoveVmInput,
    ReserveCapacityInput,
    SetVmStateInput,
    VmState,
)


def _in_line(db: Database, resource: str) -> tuple[str, str]:
    """Two tasks in line for ``resource``: the first holds it, the second waits."""
    holder, waiter = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    assert ordering.acquire(db, holder, "StopVm", {resource: 1})[0].granted
    assert not ordering.acquire(db, waiter, "StartVm", {resource: 1})[0].granted
    return holder, waiter


def _claims(db: Database, task_id: str) -> list[str]:
    return [c.resource for c in ordering.queue(db, [task_id])]


def _vm(db: Database, lab: Lab, label: str) -> RecordVmInput:
    host = lab.host()
    name = lab.vm_name(label)
    task_id = f"t-{uuid.uuid4().hex[:8]}"
    res = inventory.reserve_capacity(db, ReserveCapacityInput(
        task_id=task_id, vm_name=name, vcpus=1, memory_mib=64, host=host.name))
    return RecordVmInput(task_id=task_id, name=name, uuid=str(uuid.uuid4()), host=res.host,
                         vcpus=1, memory_mib=64, state=VmState.SHUTOFF)


def test_the_last_step_releases_in_its_transaction_and_names_whom_to_wake(
        db: Database, lab: Lab) -> None:
    acts = InventoryActivities(db)
    inp = _vm(db, lab, "lastrec")
    holder, waiter = _in_line(db, f"vm:{inp.name}")
    recorded = acts.record_vm(inp.model_copy(update={"release_task": holder}))
    assert (recorded.name, recorded.woken) == (inp.name, [waiter])
    assert _claims(db, holder) == [] and _claims(db, waiter) == [f"vm:{inp.name}"]
    # The waiter now gets its turn.
    assert ordering.acquire(db, waiter, "StartVm", {f"vm:{inp.name}": 1})[0].granted

    holder2, waiter2 = _in_line(db, f"vm:{inp.name}-2")
    stated = acts.set_vm_state(SetVmStateInput(name=inp.name, state=VmState.RUNNING,
                                               release_task=holder2))
    assert (stated.changed, stated.woken, _claims(db, holder2)) == (True, [waiter2], [])
    # At least once: a repeat finds the work done and nothing more to release.
    again = acts.set_vm_state(SetVmStateInput(name=inp.name, state=VmState.RUNNING,
                                              release_task=holder2))
    assert (again.changed, again.woken) == (False, [])

    holder3, waiter3 = _in_line(db, f"vm:{inp.name}-3")
    removed = acts.remove_vm(RemoveVmInput(name=inp.name, release_task=holder3))
    assert (removed.changed, removed.woken, _claims(db, holder3)) == (True, [waiter3], [])
    assert inventory.get_vm(db, inp.name) is None
    for task_id in (waiter, waiter2, waiter3):
        ordering.release(db, task_id)


def test_without_release_task_the_claims_stay(db: Database, lab: Lab) -> None:
    inp = _vm(db, lab, "keep")
    holder, waiter = _in_line(db, f"vm:{inp.name}")
    recorded = InventoryActivities(db).record_vm(inp)
    assert recorded.woken == [] and _claims(db, holder) == [f"vm:{inp.name}"]
    for task_id in (holder, waiter):
        ordering.release(db, task_id)


def test_a_failed_last_step_releases_nothing(db: Database, lab: Lab) -> None:
    inp = _vm(db, lab, "failrec")
    holder, waiter = _in_line(db, f"vm:{inp.name}")
    with pytest.raises(ApplicationError):  # no such host: the step fails, its transaction too
        InventoryActivities(db).record_vm(inp.model_copy(
            update={"host": "no-such-host", "release_task": holder}))
    assert _claims(db, holder) == [f"vm:{inp.name}"]
    for task_id in (holder, waiter):
        ordering.release(db, task_id)
