"""The HTTP API over the real stack (Temporal dev server, PostgreSQL, test-driver hosts):
submissions, reads, the error shape, requested_by, API tokens and the committed spec."""

from __future__ import annotations

import httpx
from api_helpers import bearer, subject_with

from conftest import Lab
from starter.api import spec
from taskomatic.inventory.db import Database


def test_the_committed_spec_is_the_apps() -> None:
    """Fails when the API changed without `python -m starter.api.spec` (which rewrites it)."""
    assert spec.main(["--check"]) == 0, f"run `{spec.REGENERATE}`"
    assert spec.current_spec()["openapi"].startswith("3.1")


async def test_no_credentials_is_401_in_the_one_error_shape(http: httpx.AsyncClient) -> None:
    answer = await http.get("/tasks")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert set(answer.json()) == {"type", "field", "message"}
    assert answer.json()["type"] == "Unauthenticated"


async def test_an_operator_creates_a_vm_as_itself(http: httpx.AsyncClient, db: Database,
                                                  lab: Lab) -> None:
    host = lab.host()
    subject, token = subject_with(db, [("operator", "*")])
    name = lab.vm_name("api")
    answer = await http.post("/tasks/CreateVm", headers=bearer(token),
                             json={"name": name, "host": host.name, "memory_mib": 256})
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    shown = (await http.get(f"/tasks/{task_id}", headers=bearer(token))).json()
    assert shown["requested_by"] == subject and shown["kind"] == "CreateVm"
    vms = (await http.get("/vms", headers=bearer(token), params={"host": host.name})).json()
    assert vms == [] or vms[0]["name"] == name  # the task may not have recorded it yet

    claimed = await http.post("/tasks/CreateVm", headers=bearer(token),
                              json={"name": lab.vm_name("b"), "requested_by": "mallory"})
    assert claimed.status_code == 400 and claimed.json()["field"] == "requested_by"


async def test_refusals_name_the_field_and_unknown_tasks_are_404(http: httpx.AsyncClient,
                                                                 db: Database) -> None:
    _, token = subject_with(db, [("admin", "*")])
    bad = await http.post("/tasks/CreateVm", headers=bearer(token),
                          json={"name": "no spaces allowed", "memory_mib": 256})
    assert bad.status_code == 400 and bad.json()["field"] == "name"
    gone = await http.get("/tasks/vm-create-nothing-00000000", headers=bearer(token))
    assert gone.status_code == 404 and gone.json()["field"] == "id"
    unknown_kind = await http.get("/tasks", headers=bearer(token), params={"kind": "Nope"})
    assert unknown_kind.status_code == 400 and unknown_kind.json()["field"] == "kind"


async def test_a_revoked_api_token_is_refused(http: httpx.AsyncClient, db: Database) -> None:
    _, admin = subject_with(db, [("admin", "*")])
    made = (await http.post("/tokens", headers=bearer(admin), json={"subject": "script-1"})
            ).json()
    assert (await http.get("/me", headers=bearer(made["token"]))).json()["subject"] == "script-1"
    listed = (await http.get("/tokens", headers=bearer(admin),
                             params={"subject": "script-1"})).json()
    assert all("token" not in row for row in listed)
    assert (await http.delete(f"/tokens/{made['id']}", headers=bearer(admin))).status_code == 200
    assert (await http.get("/me", headers=bearer(made["token"]))).status_code == 401
