"""On the lab's real libvirtd hosts: a worker stopped with SIGTERM during a live migration lets
the migration finish (its drain, ``TASKOMATIC_WORKER_DRAIN_SECONDS``) instead of aborting it,
exits only then, and the next worker finishes the task without migrating the VM a second time;
and one libvirtd cannot be registered as a second host under another spelling of its URI or
through a symlinked socket directory (its host UUID says it is the same hypervisor).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import libvirt
import pytest
from lab_fixtures import QemuLab
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment
from test_clear_host import placement
from test_migration import reservations
from worker_procs import WorkerProcesses, worker_fleet

from lab.models import LabHost
from starter.client import RequestError, TaskomaticClient
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest, HostSpec, MigrateVmRequest, MigrationLimits
from taskomatic.settings import Settings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

DRAIN_SECONDS = 60.0


def _processed(qemu_lab: QemuLab, host: LabHost, name: str) -> int:
    """Bytes the migration job of ``name`` on ``host`` has sent so far (0: no job)."""
    try:
        return int(qemu_lab.conn(host).lookupByName(name).jobStats().get("data_processed", 0))
    except libvirt.libvirtError:
        return 0


async def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def workers(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
                  tmp_path: Path) -> AsyncIterator[tuple[TaskomaticClient, WorkerProcesses]]:
    with worker_fleet(settings, temporal_env, db, tmp_path, "drain",
                      WORKER_DRAIN_SECONDS=str(DRAIN_SECONDS)) as fleet:
        yield fleet


async def test_sigterm_mid_live_migration_lets_it_finish(
        workers: tuple[TaskomaticClient, WorkerProcesses], qemu_lab: QemuLab,
        db: Database) -> None:
    client, procs = workers
    source, dest = qemu_lab.host(1), qemu_lab.host(2)
    name = qemu_lab.vm_name("drain")
    await asyncio.wait_for((await client.create_vm(CreateVmRequest(
        name=name, host=source.name, memory_mib=2048, start=True))).result(), 120)
    handle = await client.migrate_vm(MigrateVmRequest(
        name=name, to=dest.name, limits=MigrationLimits(bandwidth_mib_s=1)))
    await _until("the migration moves data", lambda: _processed(qemu_lab, source, name) > 0)

    first = procs.procs[-1]
    first.send_signal(signal.SIGTERM)  # a rolling deploy stops the worker mid-migration
    code = await asyncio.to_thread(first.wait, DRAIN_SECONDS + 30)
    log = procs.logs()
    assert code == 0, log[-3000:]
    # By the time the worker has left, the move is done: the VM runs on the destination only.
    assert qemu_lab.domains(source) == {}, log[-3000:]
    assert qemu_lab.domains(dest) == {name: True}

    procs.start()  # the next worker finishes the task: it records the move, nothing more
    result = await asyncio.wait_for(handle.result(), 120)
    assert (result.host, result.state) == (dest.name, "running")
    history = await client.temporal.get_workflow_handle(handle.id).fetch_history()
    migrations = [e for e in history.events
                  if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                  and e.activity_task_started_event_attributes.attempt > 1]
    assert migrations == [], "a step was run again after the worker stopped"
    placement(qemu_lab, db)
    assert reservations(db, qemu_lab.vm_name("")) == []


# --- one libvirtd is one host -------------------------------------------------------------


def _socket_uri(host: LabHost, socket: str) -> str:
    """``host``'s URI (``qemu+unix:///system?socket=…``) with another socket path."""
    return urlsplit(host.uri)._replace(query=f"socket={socket}").geturl()


async def test_a_lab_hypervisor_is_one_host_whatever_uri_reaches_it(
        client: TaskomaticClient, qemu_lab: QemuLab, tmp_path: Path) -> None:
    lab1, lab2 = qemu_lab.host(1), qemu_lab.host(2)
    socket = dict(parse_qsl(urlsplit(lab1.uri).query))["socket"]
    directory, _, file = socket.rpartition("/")
    for spelled in (f"{directory}/./{file}", f"{directory}//{file}"):
        with pytest.raises(RequestError) as refused:
            await client.add_host(HostSpec(name=f"{lab1.name}b", uri=_socket_uri(lab1, spelled),
                                           vcpus=4, memory_mib=4096))
        assert refused.value.field == "uri" and repr(lab1.name) in refused.value.reason

    # `lab up` registered the hosts without reading their identity: adding one again with the
    # same name and URI records it, the libvirtd's host_uuid.
    spec = HostSpec(name=lab1.name, uri=lab1.uri, vcpus=4, memory_mib=4096,
                    migration_uri=lab1.migration_uri)
    record, created = await client.add_host(spec)
    assert not created and record.hypervisor_id == lab1.host_uuid.lower()
    alias = tmp_path / "alias"
    alias.symlink_to(directory)  # no spelling rule sees through this; the UUID does
    with pytest.raises(RequestError) as refused:
        await client.add_host(HostSpec(name=f"{lab1.name}c",
                                       uri=_socket_uri(lab1, f"{alias}/{file}"),
                                       vcpus=4, memory_mib=4096))
    assert refused.value.field == "uri" and repr(lab1.name) in refused.value.reason
    assert lab1.host_uuid.lower() in refused.value.reason
    other, _ = await client.add_host(HostSpec(name=lab2.name, uri=lab2.uri, vcpus=4,
                                              memory_mib=4096, migration_uri=lab2.migration_uri))
    assert other.hypervisor_id == lab2.host_uuid.lower() != record.hypervisor_id
    assert not any(h.name.startswith(f"{lab1.name}b") or h.name == f"{lab1.name}c"
                   for h in await client.hosts())
