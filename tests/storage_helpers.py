"""Helpers shared by the storage tests: pools as libvirt sees them, a worker with a faulty step."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.db import Database
from activities.hypervisor import Hypervisors
from conftest import Lab
from starter.client import TaskomaticClient
from taskomatic.models import HostSpec
from taskomatic.settings import Settings
from worker import activity_list
from workflows.storage import STORAGE_WORKFLOWS
from workflows.vm_lifecycle import WORKFLOWS

ROOT = "/var/lib/taskomatic/pools"  # the default pool root; test-driver pools never touch disk


def pool_path(lab: Lab, label: str) -> str:
    return f"{ROOT}/{lab.prefix}-{label}"


def pool_name(lab: Lab, label: str) -> str:
    return f"p-{lab.prefix}-{label}"


def libvirt_pools(lab: Lab, host: HostSpec) -> dict[str, tuple[bool, bool]]:
    """name → (active, autostart), as libvirt sees it on that host."""
    conn = lab.hv.connection(host.uri)
    return {p.name(): (bool(p.isActive()), bool(p.autostart()))
            for p in conn.listAllStoragePools(0)}


def libvirt_volumes(lab: Lab, host: HostSpec, pool: str) -> list[str]:
    p = lab.hv.connection(host.uri).storagePoolLookupByName(pool)
    return sorted(v.name() for v in p.listAllVolumes(0)) if p.isActive() else []


async def faulty_client(temporal_env: WorkflowEnvironment, settings: Settings,
                        hypervisors: Hypervisors, db: Database,
                        replaced: Callable[..., Any]) -> AsyncIterator[TaskomaticClient]:
    """A client whose tasks run on a worker where one activity (by name) is ``replaced``."""
    name = getattr(replaced, "__temporal_activity_definition").name
    queue = settings.model_copy(update={"task_queue": f"faulty-{uuid.uuid4().hex[:6]}"})
    acts = [a for a in activity_list(queue, hypervisors) if getattr(a, "__name__", "") != name]
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with Worker(temporal_env.client, task_queue=queue.task_queue,
                          workflows=[*WORKFLOWS, *STORAGE_WORKFLOWS],
                          activities=[*acts, replaced], activity_executor=executor):
            yield TaskomaticClient(temporal_env.client, queue, db)
