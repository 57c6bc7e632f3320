"""Transport security for real: mTLS and an API key through a TLS-terminating nginx gRPC proxy
in front of the dev server; PostgreSQL ssl settings reaching libpq, and verified TLS to a real
PostgreSQL server that refuses anything else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from temporalio.testing import WorkflowEnvironment
from tlslab import (
    SERVER_NAME,
    CertificateAuthority,
    GrpcTlsProxy,
    postgres_binaries,
    tls_postgres,
)

from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.inventory.db import Database, ensure_database, upgrade
from taskomatic.models import StartVmRequest
from taskomatic.settings import Settings
from taskomatic.temporal import connect_temporal

API_KEY = f"key-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue = CertificateAuthority(directory, "ca"), CertificateAuthority(directory, "rogue")
    return {"ca": ca, "server": ca.issue(SERVER_NAME, server=True),
            "client": ca.issue("worker-1", server=False),
            "rogue": rogue.issue("intruder", server=False), "rogue_ca": rogue}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, temporal_env: WorkflowEnvironment,
          pki: dict[str, Any]) -> Iterator[GrpcTlsProxy]:
    upstream = temporal_env.client.service_client.config.target_host
    nginx = GrpcTlsProxy(tmp_path_factory.mktemp("nginx"), upstream, pki["server"],
                         pki["ca"].path, API_KEY)
    yield nginx
    nginx.stop()


def _settings(port: int, **tls: Any) -> Settings:
    return Settings(_env_file=None, temporal_address=f"127.0.0.1:{port}",  # type: ignore[call-arg]
                    task_queue=f"tls-{uuid.uuid4().hex[:6]}", **tls)


async def test_client_with_the_right_certificate_starts_and_lists(proxy: GrpcTlsProxy,
                                                                  pki: dict[str, Any]) -> None:
    settings = _settings(proxy.mtls_port, temporal_tls_ca_file=pki["ca"].path,
                         temporal_tls_cert_file=pki["client"].cert,
                         temporal_tls_key_file=pki["client"].key,
                         temporal_tls_server_name=SERVER_NAME)
    client = await connect_temporal(settings)
    task_id = f"tls-{uuid.uuid4().hex}"
    handle = await client.start_workflow("StartVm", StartVmRequest(name="tls-vm"), id=task_id,
                                         task_queue=settings.task_queue)
    try:
        assert (await handle.describe()).id == task_id
        for _ in range(100):  # visibility trails the start a little
            listed = [wf.id async for wf in client.list_workflows(
                f"TaskQueue = '{settings.task_queue}'")]
            if listed:
                break
            await asyncio.sleep(0.1)
        assert listed == [task_id]
    finally:
        await handle.terminate("test done")


@pytest.mark.parametrize(("who", "message"), [
    ("no certificate", "wants a client certificate it trusts"),
    ("untrusted certificate", "wants a client certificate it trusts"),
    ("plaintext", "does not speak plaintext gRPC; it may need TLS"),
    ("server not trusted", "the server's certificate is not trusted"),
])
async def test_clients_without_a_trusted_certificate_are_refused(
        proxy: GrpcTlsProxy, pki: dict[str, Any], who: str, message: str) -> None:
    tls: dict[str, Any] = {"temporal_tls_ca_file": pki["ca"].path,
                           "temporal_tls_server_name": SERVER_NAME}
    if who == "untrusted certificate":
        tls.update(temporal_tls_cert_file=pki["rogue"].cert,
                   temporal_tls_key_file=pki["rogue"].key)
    elif who == "plaintext":
        tls = {}
    elif who == "server not trusted":  # a client that trusts another CA than the server's
        tls.update(temporal_tls_ca_file=pki["rogue_ca"].path,
                   temporal_tls_cert_file=pki["client"].cert,
                   temporal_tls_key_file=pki["client"].key)
    with pytest.raises(RuntimeError) as err:
        await connect_temporal(_settings(proxy.mtls_port, **tls))
    assert str(err.value).startswith(f"cannot connect to Temporal at 127.0.0.1:{proxy.mtls_port}")
    assert message in str(err.value)


def test_the_cli_goes_through_the_same_tls_settings(proxy: GrpcTlsProxy,
                                                     pki: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    env.update(TASKOMATIC_TEMPORAL_ADDRESS=f"127.0.0.1:{proxy.mtls_port}",
               TASKOMATIC_TEMPORAL_TLS_CA_FILE=str(pki["ca"].path),
               TASKOMATIC_TEMPORAL_TLS_SERVER_NAME=SERVER_NAME)
    cli = [str(Path(sys.executable).parent / "taskomatic"), "tasks", "list", "--json"]
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3, refused.stderr
    assert "wants a client certificate" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr
    env.update(TASKOMATIC_TEMPORAL_TLS_CERT_FILE=str(pki["client"].cert),
               TASKOMATIC_TEMPORAL_TLS_KEY_FILE=str(pki["client"].key))
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


async def test_api_key_is_required_and_accepted(proxy: GrpcTlsProxy, pki: dict[str, Any]) -> None:
    tls = {"temporal_tls_ca_file": pki["ca"].path, "temporal_tls_server_name": SERVER_NAME}
    client = await connect_temporal(_settings(proxy.key_port, temporal_api_key=API_KEY, **tls))
    assert [wf async for wf in client.list_workflows("WorkflowId = 'none'")] == []
    for wrong in (None, "not-the-key"):
        with pytest.raises(RuntimeError) as err:
            await connect_temporal(_settings(proxy.key_port, temporal_api_key=wrong, **tls))
        print(wrong, "->", err.value)
        assert "not authorised: check TASKOMATIC_TEMPORAL_API_KEY" in str(err.value)
        assert API_KEY not in str(err.value)


async def test_tls_files_are_checked(tmp_path: Path, pki: dict[str, Any]) -> None:
    with pytest.raises(CodecError, match="go together"):
        await connect_temporal(_settings(1, temporal_tls_cert_file=pki["client"].cert))
    with pytest.raises(CodecError, match="cannot read"):
        await connect_temporal(_settings(1, temporal_tls_ca_file=tmp_path / "none.pem"))


def _pool_refused(db: Database) -> str:
    """The message of the typed error a pool connection fails with (DatabaseUnavailable)."""
    with pytest.raises(Exception) as err, db.transaction():
        pass
    info = error_info(err.value)
    assert info.type is ErrorType.DATABASE_UNAVAILABLE
    return info.message


def test_database_ssl_settings_reach_libpq(database_url: str) -> None:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW ssl")
        row = cur.fetchone()
        server_ssl = row is not None and row[0] == "on"
    required = Settings(_env_file=None, database_url=database_url,  # type: ignore[call-arg]
                        database_sslmode="require")
    assert "sslmode=require" in required.database_url
    db = Database(required.database_url, max_connections=1)
    try:
        if server_ssl:
            with db.transaction() as cur:
                cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert cur.fetchone() == {"ssl": True}
        else:  # this machine's server has no TLS: libpq must refuse rather than fall back
            assert "does not support SSL" in _pool_refused(db)
    finally:
        db.close()
    disabled = Settings(_env_file=None, database_url=database_url,  # type: ignore[call-arg]
                        database_sslmode="disable", database_sslrootcert=Path("/x/ca.pem"))
    assert "sslrootcert=%2Fx%2Fca.pem" in disabled.database_url
    with psycopg2.connect(disabled.database_url) as conn:
        assert conn.get_dsn_parameters()["sslmode"] == "disable"


def test_every_database_connection_uses_verified_tls(pki: dict[str, Any]) -> None:
    """Admin (create database), migrations and the pool all reach a TLS-only server with the
    certificate checked against the configured CA; a wrong CA and plain TCP are refused."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server built with TLS here (Debian's postgresql package)")
    with tls_postgres(bin_dir, pki["server"]) as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/taskomatic_tls"

        def settings(**ssl: Any) -> Settings:
            return Settings(_env_file=None, database_url=url, **ssl)  # type: ignore[call-arg]

        good = settings(database_sslmode="verify-full", database_sslrootcert=pki["ca"].path)
        assert ensure_database(good.database_url) is True  # the admin connection
        assert upgrade(good.database_url)  # the migrations' connection
        db = Database(good.database_url, max_connections=2)
        try:
            with db.transaction() as cur:  # a pool connection
                cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                row = cur.fetchone()
                assert row is not None and row["ssl"] is True and row["version"].startswith("TLS")
        finally:
            db.close()

        wrong_ca = settings(database_sslmode="verify-full",
                            database_sslrootcert=pki["rogue_ca"].path)
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            ensure_database(wrong_ca.database_url)
        db = Database(wrong_ca.database_url, max_connections=1)
        try:
            assert "certificate verify failed" in _pool_refused(db)
        finally:
            db.close()

        plain = settings(database_sslmode="disable")
        with pytest.raises(psycopg2.OperationalError, match="no encryption"):
            upgrade(plain.database_url)

