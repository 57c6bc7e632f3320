"""Who may do what through the API: OIDC tokens (valid, expired, wrongly signed, wrong audience,
wrong issuer, missing), and the permission matrix — every role, scope and task kind, counting
unauthorized submissions and false refusals against Temporal itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import Issuer, bearer, subject_with
from cli_helpers import run_cli
from cluster_helpers import cluster, join
from cryptography.hazmat.primitives.asymmetric import rsa
from storage_helpers import pool_path
from temporalio.testing import WorkflowEnvironment
from test_cancellation import task_exists

from conftest import Lab
from starter.api.app import create_app
from starter.client import TaskomaticClient
from starter.tasks import status_of
from taskomatic import inventory
from taskomatic.inventory import access
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterSpec, CreatePoolRequest, CreateVmRequest
from taskomatic.settings import Settings, get_settings
from workflows.kinds import KINDS


def _app_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_oidc_tokens_are_checked_against_the_jwks(tmp_path: Path, settings: Settings,
                                                        client: TaskomaticClient,
                                                        db: Database) -> None:
    idp = Issuer(tmp_path / "jwks.json")
    oidc = settings.model_copy(update={"api_oidc_issuer": idp.issuer,
                                       "api_oidc_audience": idp.audience,
                                       "api_jwks_file": idp.jwks_file})
    subject = f"alice-{uuid.uuid4().hex[:6]}@example.org"
    async with _app_client(create_app(oidc, client, db)) as http:
        me = await http.get("/me", headers=bearer(idp.token(subject)))
        assert me.status_code == 200 and me.json()["subject"] == subject
        assert me.json()["via"] == "jwt" and me.json()["grants"] == []
        forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused = {
            "expired": idp.token(subject, lifetime=-120),
            "wrongly signed": idp.token(subject, key=forger),
            "wrong audience": idp.token(subject, audience="another-api"),
            "wrong issuer": idp.token(subject, issuer="https://evil.test"),
            "garbage": "not.a.jwt",
        }
        for why, token in refused.items():
            answer = await http.get("/me", headers=bearer(token))
            assert answer.status_code == 401, why
            assert answer.json()["type"] == "Unauthenticated", why
        assert (await http.get("/me")).status_code == 401  # missing
        # no grant: authenticated, but every submission is refused (and nothing is submitted)
        answer = await http.post("/tasks/StartVm", headers=bearer(idp.token(subject)),
                                 json={"name": "web1"})
        assert answer.status_code == 403 and "operate" in answer.json()["message"]


async def test_local_admin_mode_is_explicit(settings: Settings, client: TaskomaticClient,
                                            db: Database) -> None:
    async with _app_client(create_app(settings, client, db)) as http:
        assert (await http.get("/me")).status_code == 401
    local = settings.model_copy(update={"api_local_admin": True})
    async with _app_client(create_app(local, client, db)) as http:
        me = (await http.get("/me")).json()
        assert me["subject"] == "local-admin" and me["grants"] == [["admin", "*"]]


async def test_cluster_grants_from_the_api(settings: Settings, client: TaskomaticClient,
                                           db: Database, lab: Lab) -> None:
    mine = cluster(db, lab, "g")
    subject = f"ops-{uuid.uuid4().hex[:6]}"
    local = settings.model_copy(update={"api_local_admin": True})
    async with _app_client(create_app(local, client, db)) as http:
        answer = await http.post("/grants", json={"subject": subject, "role": "operator",
                                                  "scope": "cluster:zz-no-such"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == "scope" and "no cluster" in answer.json()["message"]
        assert _grants(db, subject) == []  # nothing half-made
        answer = await http.post("/grants", json={"subject": subject, "role": "operator",
                                                  "scope": f"cluster:{mine}"})
        assert answer.status_code == 200 and answer.json()["scope"] == f"cluster:{mine}"


VM_KINDS = {"CreateVm", "StartVm", "StopVm", "DestroyVm", "MigrateVm"}
HOST_KINDS = {"ClearHost", "ActivateHost", "RestoreHost"}
POOL_KINDS = {"CreateStoragePool", "DestroyStoragePool", "RefreshStoragePool",
              "SetPoolAutostart", "CreateVolume", "DeleteVolume", "ResizeVolume"}
IN_CLUSTER = "CreateVm in cluster"  # a create that names the cluster, not a host
# scope label -> the kinds whose resources it covers (written out, not computed by the rule)
COVERS = {
    "all": VM_KINDS | HOST_KINDS | POOL_KINDS | {IN_CLUSTER},
    "vm-match": VM_KINDS | {IN_CLUSTER},
    "vm-other": set(),
    "host-match": VM_KINDS | HOST_KINDS | POOL_KINDS,  # the VMs and pools lie on the host
    "host-other": set(),
    "cluster-match": VM_KINDS | HOST_KINDS | POOL_KINDS | {IN_CLUSTER},  # the host is in it
    "cluster-other": set(),
    "pool-match": POOL_KINDS,
    "pool-other": set(),
}
ROLES_THAT_OPERATE = {"viewer": False, "operator": True, "admin": True}


@pytest.fixture
async def matrix_client(temporal_env: WorkflowEnvironment, settings: Settings, db: Database
                        ) -> AsyncIterator[TaskomaticClient]:
    """A starter client on a task queue nobody polls: submitted tasks exist in Temporal (and
    can be counted) but never run."""
    queue = settings.model_copy(update={"task_queue": f"matrix-{uuid.uuid4().hex[:6]}"})
    yield TaskomaticClient(temporal_env.client, queue, db)
    async for wf in temporal_env.client.list_workflows(f"TaskQueue = '{queue.task_queue}'"):
        if wf.status and wf.status.name == "RUNNING":
            await temporal_env.client.get_workflow_handle(wf.id).terminate("test over")


async def test_permission_matrix(matrix_client: TaskomaticClient, client: TaskomaticClient,
                                 settings: Settings, db: Database, lab: Lab) -> None:
    mine, other = cluster(db, lab, "mx"), cluster(db, lab, "other")
    host = await join(client, lab, 1, mine)
    stranger = await join(client, lab, 2, other)  # the other cluster is not empty
    vm, pool = lab.vm_name("mx"), f"p-{lab.prefix}-mx"
    await (await client.create_vm(CreateVmRequest(name=vm, host=host.name, memory_mib=64))
           ).result()
    await (await client.create_pool(CreatePoolRequest(name=pool, host=host.name,
                                                      path=pool_path(lab, "mx")))).result()
    shared = f"p-{lab.prefix}-sh"
    await (await client.create_pool(CreatePoolRequest(name=shared, host=host.name, shared=True,
                                                      path=pool_path(lab, "sh")))).result()
    # Every submission waits for this task (which never runs), so none is checked against the
    # inventory or does anything: the matrix tests authorization alone.
    gate = (await matrix_client.start(CreateVmRequest(name=lab.vm_name("gate")))).id
    bodies = {
        "CreateVm": {"name": lab.vm_name("new"), "host": host.name},
        IN_CLUSTER: {"name": lab.vm_name("new2"), "cluster": mine},
        "StartVm": {"name": vm}, "StopVm": {"name": vm}, "DestroyVm": {"name": vm},
        "MigrateVm": {"name": vm},
        "ClearHost": {"host": host.name}, "ActivateHost": {"host": host.name},
        "RestoreHost": {"host": host.name},
        "CreateStoragePool": {"name": pool, "host": host.name, "path": pool_path(lab, "mx")},
        "DestroyStoragePool": {"name": pool}, "RefreshStoragePool": {"name": pool},
        "SetPoolAutostart": {"name": pool, "autostart": True},
        "CreateVolume": {"pool": pool, "name": "v1", "capacity": "1MiB"},
        "DeleteVolume": {"pool": pool, "name": "v1"},
        "ResizeVolume": {"pool": pool, "name": "v1", "capacity": "2MiB"},
    }
    assert set(bodies) - {IN_CLUSTER} == {k.name for k in KINDS.values() if k.method}
    scopes = {"all": "*", "vm-match": f"vm:vm-{lab.prefix}-*", "vm-other": "vm:zz-*",
              "host-match": f"host:{host.name}", "host-other": "host:zz",
              "cluster-match": f"cluster:{mine}", "cluster-other": f"cluster:{other}",
              "pool-match": f"pool:{pool}", "pool-other": "pool:zz"}
    unauthorized, false_refusals, cases = [], [], 0
    async with _app_client(create_app(settings, matrix_client, db)) as http:
        for role, operates in ROLES_THAT_OPERATE.items():
            for label, scope in scopes.items():
                subject, token = subject_with(db, [(role, scope)], label=role)
                for kind, body in bodies.items():
                    cases += 1
                    task_id = f"mx-{uuid.uuid4().hex[:12]}"
                    answer = await http.post(f"/tasks/{kind.split()[0]}", headers=bearer(token),
                                             params={"task_id": task_id},
                                             json={**body, "after": [gate]})
                    expected = operates and kind in COVERS[label]
                    exists = await task_exists(matrix_client, task_id)
                    case = (role, scope, kind, answer.status_code, answer.text[:200])
                    if exists and not expected:
                        unauthorized.append(case)
                    if expected and (answer.status_code != 202 or not exists):
                        false_refusals.append(case)
                    if not expected:
                        assert answer.status_code == 403, case
                        assert answer.json()["field"] == "permission", case
                        assert "'operate'" in answer.json()["message"], case
                    elif exists:  # (describe() would query the task: nothing runs it)
                        desc = await matrix_client.temporal.get_workflow_handle(task_id
                                                                                ).describe()
                        assert status_of(desc, await desc.memo()).requested_by == subject, case
        # a viewer on the cluster reads its hosts and what lies on them, nothing else
        _, token = subject_with(db, [("viewer", f"cluster:{mine}")], label="viewer")
        hosts = {h["name"] for h in (await http.get("/hosts", headers=bearer(token))).json()}
        assert host.name in hosts and stranger.name not in hosts
        assert vm in {v["name"] for v in (await http.get("/vms", headers=bearer(token))).json()}
        pools = (await http.get("/pools", headers=bearer(token))).json()
        assert {pool, shared} <= {p["name"] for p in pools}
        assert {p["host"] for p in pools} <= hosts
        # a shared pool of the cluster is the cluster's: its operators may act on it
        for scope, status in ((f"cluster:{mine}", 202), (f"cluster:{other}", 403)):
            _, token = subject_with(db, [("operator", scope)], label="operator")
            answer = await http.post("/tasks/RefreshStoragePool", headers=bearer(token),
                                     json={"name": shared, "after": [gate]})
            assert answer.status_code == status, (scope, answer.text)
    assert cases == 3 * 9 * 16
    assert unauthorized == [], unauthorized
    assert false_refusals == [], false_refusals


def test_tokens_and_grants_from_the_cli(monkeypatch: pytest.MonkeyPatch,
                                        database_url: str, db: Database) -> None:
    monkeypatch.setenv("TASKOMATIC_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        subject = f"ci-{uuid.uuid4().hex[:6]}"
        assert run_cli(["grant", "add", subject, "operator", "vm:web*"])[0] == 0
        code, err = run_cli(["grant", "add", subject, "operator", "cluster:zz-no-such"])
        assert code == 2 and "scope" in err and "no cluster 'zz-no-such'" in err
        code, err = run_cli(["grant", "add", subject, "operator", "rack:r1"])
        assert code == 2 and "scope" in err and "cluster:NAME" in err
        code, err = run_cli(["grant", "add", subject, "root"])
        assert code == 2
        inventory.create_cluster(db, ClusterSpec(name=f"c-{subject}", hypervisor_type="test"))
        assert run_cli(["grant", "add", subject, "viewer", f"cluster:c-{subject}"])[0] == 0
        assert [(g.role, g.scope) for g in _grants(db, subject)] == [
            ("operator", "vm:web*"), ("viewer", f"cluster:c-{subject}")]
        assert run_cli(["token", "create", subject])[0] == 0
        [token] = access.list_tokens(db, subject)
        assert run_cli(["token", "revoke", token.id])[0] == 0
        assert access.list_tokens(db, subject)[0].revoked_at is not None
        code, err = run_cli(["token", "revoke", "000000000000"])
        assert code == 2 and "id" in err
    finally:
        get_settings.cache_clear()


def _grants(db: Database, subject: str) -> list[Any]:
    return access.list_grants(db, subject)
