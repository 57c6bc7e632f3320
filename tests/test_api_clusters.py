"""The API's cluster routes and the reads that completed the starter's surface (GET
/pools/{name}, GET /tasks/{id}/moves), over the real stack: who may read and write a cluster
(``*`` and ``cluster:NAME`` grants), 403 and 404, and refusals in the one error shape."""

from __future__ import annotations

import httpx
from api_helpers import bearer, subject_with
from cluster_helpers import cluster, join
from storage_helpers import pool_name, pool_path

from conftest import Lab
from starter.client import TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import (
    ClearHostRequest,
    CreatePoolRequest,
    CreateVmRequest,
    HostSpec,
    ReserveCapacityInput,
)


def _refusal(answer: httpx.Response, status: int, field: str | None, words: str = "") -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"type", "field", "message"} and body["field"] == field, body
    assert words in body["message"], body


async def test_an_admin_creates_changes_and_deletes_a_cluster(
        http: httpx.AsyncClient, client: TaskomaticClient, db: Database, lab: Lab) -> None:
    _, token = subject_with(db, [("admin", "*")])
    auth = bearer(token)
    name = f"c{lab.prefix}-api"
    spec = {"name": name, "hypervisor_type": "test", "vcpu_overcommit": 2.0}
    made = await http.post("/clusters", headers=auth, json=spec)
    assert made.status_code == 200 and made.json()["created"] is True, made.text
    again = await http.post("/clusters", headers=auth, json=spec)
    assert again.json()["created"] is False
    _refusal(await http.post("/clusters", headers=auth, json=spec | {"weigher": "pack"}),
             400, "name", "already exists with weigher 'spread'")
    host = await join(client, lab, 1, name, cpus=4, physical_mib=2048)  # 8 vCPUs
    inventory.reserve_capacity(db, ReserveCapacityInput(
        task_id=f"t-{lab.prefix}-api", vm_name=lab.vm_name("api"), vcpus=6, memory_mib=64,
        host=host.name))

    listed = (await http.get("/clusters", headers=auth)).json()
    assert name in [c["name"] for c in listed]
    shown = (await http.get(f"/clusters/{name}", headers=auth)).json()
    assert (shown["hosts"], shown["vcpus"], shown["used_vcpus"]) == ([host.name], 8, 6)

    changed = await http.patch(f"/clusters/{name}", headers=auth,
                               json={"vcpu_overcommit": 3, "weigher": "pack"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["vcpus"], changed.json()["weigher"]) == (12, "pack")
    _refusal(await http.patch(f"/clusters/{name}", headers=auth, json={"vcpu_overcommit": 1}),
             400, "vcpu_overcommit", f"host {host.name!r} would have 4 vCPUs for 6 in use")
    _refusal(await http.patch(f"/clusters/{name}", headers=auth, json={"memory_overcommit": 0}),
             400, "memory_overcommit")
    _refusal(await http.patch(f"/clusters/{name}", headers=auth,
                              json={"hypervisor_type": "qemu"}), 400, "hypervisor_type")
    assert (await http.get(f"/clusters/{name}", headers=auth)).json()["vcpus"] == 12

    _refusal(await http.delete(f"/clusters/{name}", headers=auth), 400, "name",
             f"still has hosts: {host.name}")
    _refusal(await http.delete("/clusters/default", headers=auth), 400, "name",
             "is not deleted")
    empty = cluster(db, lab, "empty")
    gone = await http.delete(f"/clusters/{empty}", headers=auth)
    assert gone.status_code == 200 and gone.json()["name"] == empty, gone.text
    for answer in (await http.delete(f"/clusters/{empty}", headers=auth),
                   await http.get(f"/clusters/{empty}", headers=auth),
                   await http.patch(f"/clusters/{empty}", headers=auth, json={})):
        _refusal(answer, 404, "name", f"no cluster named {empty!r}")


async def test_cluster_grants_scope_the_cluster_routes(http: httpx.AsyncClient, db: Database,
                                                       lab: Lab) -> None:
    mine, other = cluster(db, lab, "mine"), cluster(db, lab, "other")
    _, viewer = subject_with(db, [("viewer", f"cluster:{mine}")], "v")
    _, admin = subject_with(db, [("admin", f"cluster:{mine}")], "a")
    _, host_admin = subject_with(db, [("admin", f"host:h{lab.prefix}-1")], "h")

    seen = (await http.get("/clusters", headers=bearer(viewer))).json()
    assert [c["name"] for c in seen] == [mine]
    assert (await http.get(f"/clusters/{mine}", headers=bearer(viewer))).status_code == 200
    _refusal(await http.get(f"/clusters/{other}", headers=bearer(viewer)), 404, "name")
    assert (await http.get("/clusters", headers=bearer(host_admin))).json() == []
    _refusal(await http.patch(f"/clusters/{mine}", headers=bearer(viewer),
                              json={"weigher": "pack"}), 403, "permission",
             f"lacks the 'admin' permission on cluster:{mine}")

    changed = await http.patch(f"/clusters/{mine}", headers=bearer(admin),
                               json={"weigher": "pack"})
    assert changed.status_code == 200 and changed.json()["weigher"] == "pack"
    for answer in (await http.patch(f"/clusters/{other}", headers=bearer(admin),
                                    json={"weigher": "pack"}),
                   await http.delete(f"/clusters/{other}", headers=bearer(admin)),
                   await http.post("/clusters", headers=bearer(admin),
                                   json={"name": f"{mine}-new", "hypervisor_type": "test"}),
                   await http.delete(f"/clusters/{mine}", headers=bearer(host_admin))):
        _refusal(answer, 403, "permission")
    assert (await http.get(f"/clusters/{other}", headers=bearer(admin))).status_code == 404
    no_one = await http.get("/clusters")
    assert no_one.status_code == 401


async def test_one_pool_and_a_host_tasks_moves(http: httpx.AsyncClient,
                                               client: TaskomaticClient, db: Database,
                                               lab: Lab) -> None:
    host, other = lab.host(1), lab.host(2)
    pool = pool_name(lab, "one")
    await (await client.create_pool(CreatePoolRequest(name=pool, host=host.name,
                                                      path=pool_path(lab, "one")))).result()
    _, reader = subject_with(db, [("viewer", f"host:{host.name}")], "r")
    _, stranger = subject_with(db, [("viewer", f"host:{other.name}")], "s")
    shown = await http.get(f"/pools/{pool}", headers=bearer(reader))
    assert shown.status_code == 200 and (shown.json()["name"], shown.json()["host"]) == (
        pool, host.name), shown.text
    for answer in (await http.get(f"/pools/{pool}", headers=bearer(stranger)),
                   await http.get(f"/pools/{pool}-none", headers=bearer(reader))):
        _refusal(answer, 404, "name", "no pool named")

    created = await client.create_vm(CreateVmRequest(name=lab.vm_name("mv"), host=host.name,
                                                     memory_mib=64))
    await created.result()
    clear = await client.clear_host(ClearHostRequest(host=host.name, dry_run=True))
    await clear.result()
    moves = await http.get(f"/tasks/{clear.id}/moves", headers=bearer(reader))
    assert moves.status_code == 200, moves.text
    assert moves.json() == (await client.host_moves(clear.id)).model_dump(mode="json")
    assert set(moves.json()) >= {"moved", "in_flight", "remaining", "failed", "eta_seconds"}
    _refusal(await http.get(f"/tasks/{clear.id}/moves", headers=bearer(stranger)), 404, "id")
    _refusal(await http.get(f"/tasks/{clear.id}x/moves", headers=bearer(reader)), 404, "id")
    _, everyone = subject_with(db, [("viewer", "*")], "e")
    _refusal(await http.get(f"/tasks/{created.id}/moves", headers=bearer(everyone)), 400, "id",
             "only ClearHost and RestoreHost tasks have moves")


async def test_a_host_registered_over_the_api_gets_its_clusters_shared_pools(
        http: httpx.AsyncClient, client: TaskomaticClient, db: Database, lab: Lab) -> None:
    name = cluster(db, lab, "share")
    first = await join(client, lab, 1, name)
    pool = pool_name(lab, "shared")
    await (await client.create_pool(CreatePoolRequest(
        name=pool, host=first.name, path=pool_path(lab, "shared"), shared=True))).result()
    subject, admin = subject_with(db, [("admin", "*")], "a")
    spec = {"name": f"h{lab.prefix}-2", "cluster": name, "vcpus": 4, "memory_mib": 4096,
            "uri": write_test_host(lab.dir, f"h{lab.prefix}-2", 4, 4096)}
    added = await http.post("/hosts", json=spec, headers=bearer(admin))
    assert added.status_code == 200, added.text
    lab.hosts.append(HostSpec.model_validate(spec))  # leaves service after the test
    [task_id] = added.json()["shared_pool_tasks"]
    await client.task(task_id).result()
    assert (await client.task(task_id).describe()).requested_by == subject
    found = inventory.get_pool(db, pool)
    assert found is not None
    assert {h.host: h.state for h in found.pool.hosts} == {first.name: "active",
                                                           spec["name"]: "active"}
    assert pool in [p.name() for p in lab.hv.connection(spec["uri"]).listAllStoragePools(0)]
    again = await http.post("/hosts", json=spec, headers=bearer(admin))  # nothing more to share
    assert again.status_code == 200 and again.json()["added"] is False
    assert again.json()["shared_pool_tasks"] == []
