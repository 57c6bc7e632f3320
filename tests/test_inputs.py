"""Inputs taskomatic reads or makes itself: DSNs merged by libpq's rules, batches of any length,
and every name the engine generates accepted by its own validators."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from cli_helpers import cli_on_stack, run_cli, run_cli_async
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from storage_helpers import libvirt_volumes, pool_name, pool_path
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import Lab
from starter.batch import MAX_BATCH_TASKS, BatchItem, plan_batch
from starter.client import TaskomaticClient
from starter.dev.parts import write_test_host
from starter.errors import RequestError, validated
from taskomatic.hypervisor.identity import host_identity
from taskomatic.models import (
    ROOT_TASK_ID_MAX,
    CreatePoolRequest,
    CreateVmRequest,
    DeleteVolumeRequest,
    DestroyVmRequest,
    DiskRequest,
    HostSpec,
    ReconcileRequest,
    ResizeVolumeRequest,
    TaskId,
    VolumeName,
    VolumePath,
    child_task_id,
    new_task_id,
    owned_volume_name,
)
from taskomatic.settings import Settings, get_settings
from workflows.kinds import KINDS


def _settings(url: str, **more: object) -> Settings:
    return Settings(_env_file=None, database_url=url, **more)  # type: ignore[call-arg]


# --- case 10: TASKOMATIC_DATABASE_SSL* merged into the DSN as libpq reads it ----------------


@pytest.mark.parametrize("url", [
    "host=db.example password='x sslmode=disable' dbname=taskomatic",
    "host=db.example password='a\\'b sslmode=disable' dbname=taskomatic",
    "host=db.example application_name='sslmode=verify-full' dbname=taskomatic",
    "postgresql://u:x%20sslmode%3Ddisable@db.example/taskomatic",
    "postgresql://u@db.example/taskomatic?application_name=sslmode%3Ddisable",
])
def test_ssl_settings_survive_a_quoted_value_that_mentions_them(url: str) -> None:
    merged = _settings(url, database_sslmode="require",
                       database_sslrootcert="/etc/ca dir/ca.pem").database_url
    params = psycopg2.extensions.parse_dsn(merged)
    assert params["sslmode"] == "require" and params["sslrootcert"] == "/etc/ca dir/ca.pem"
    before = psycopg2.extensions.parse_dsn(url)
    assert {k: params[k] for k in before} == before  # nothing of the DSN itself changed
    assert ("://" in merged) == ("://" in url)  # a URL stays a URL


@pytest.mark.parametrize("url", [
    "host=db.example sslmode=disable dbname=taskomatic",
    "host=db.example sslmode = 'disable' dbname=taskomatic",
    "postgresql://u@db.example/taskomatic?sslmode=disable",
])
def test_a_dsn_that_sets_sslmode_itself_wins(url: str) -> None:
    merged = _settings(url, database_sslmode="require").database_url
    assert psycopg2.extensions.parse_dsn(merged)["sslmode"] == "disable"


def test_an_unparsable_dsn_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="TASKOMATIC_DATABASE_URL"):
        _settings("host=db.example password='unterminated", database_sslmode="require")
    monkeypatch.setenv("TASKOMATIC_DATABASE_URL", "host=db.example password='unterminated")
    monkeypatch.setenv("TASKOMATIC_DATABASE_SSLMODE", "require")
    get_settings.cache_clear()
    try:
        code, stderr = run_cli(["host", "list"])
    finally:
        get_settings.cache_clear()
    assert code == 3 and "error: TASKOMATIC_DATABASE_URL is not a libpq URL" in stderr, stderr
    assert "Traceback" not in stderr


# --- case 9: a batch that is a long chain --------------------------------------------------


def _chain(n: int) -> list[dict[str, Any]]:
    """``n`` StopVm items, each after the next one listed: they run in the reverse of the
    listed order (the issue's batch)."""
    return [{"key": f"s{i}", "kind": "StopVm", "request": {"name": "web1"},
             "after": [f"s{i + 1}"] if i + 1 < n else []} for i in range(n)]


def test_a_long_chain_is_planned_prerequisites_first() -> None:
    plan = plan_batch([BatchItem.model_validate(i) for i in _chain(1_500)], KINDS)
    assert [task.key for task in plan] == [f"s{i}" for i in reversed(range(1_500))]
    seen: set[str] = set()
    for task in plan:
        assert set(task.request.after) <= seen
        seen.add(task.task_id)


async def test_the_cli_takes_a_long_chain_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment,
        settings: Settings, worker: Worker) -> None:
    """The whole chain is planned; its first task is then refused (no such VM), naming the
    field: nothing of the batch is submitted."""
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    file = tmp_path / "chain.json"
    file.write_text(json.dumps([{**item, "request": {"name": ghost}} for item in _chain(1_500)]))
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        code, stderr = await run_cli_async(["batch", str(file)])
    assert "Traceback" not in stderr and "RecursionError" not in stderr, stderr
    assert code == 2 and f"no VM named {ghost!r}" in stderr, stderr


def test_a_batch_above_the_cap_is_refused_naming_tasks(tmp_path: Path) -> None:
    file = tmp_path / "big.json"
    file.write_text(json.dumps({"tasks": [{"key": f"k{i}", "kind": "StopVm",
                                           "request": {"name": "web1"}}
                                          for i in range(MAX_BATCH_TASKS + 1)]}))
    code, stderr = run_cli(["batch", str(file)])
    assert code == 2 and f"error: tasks: at most {MAX_BATCH_TASKS} tasks" in stderr, stderr
    with pytest.raises(RequestError) as refused:
        plan_batch([BatchItem(key=f"k{i}", kind="StopVm", request={"name": "web1"})
                    for i in range(MAX_BATCH_TASKS + 1)], KINDS)
    assert refused.value.field == "items"


@pytest.mark.parametrize(("items", "field", "cycle"), [
    ([{"key": "a", "kind": "StopVm", "request": {"name": "x"}, "after": ["a"]}],
     "items[0].after", "a → a"),
    ([{"key": "z", "kind": "StopVm", "request": {"name": "x"}},
      {"key": "b", "kind": "StopVm", "request": {"name": "x"}, "after": ["c"]},
      {"key": "c", "kind": "StopVm", "request": {"name": "x"}, "after": ["d"]},
      {"key": "d", "kind": "StopVm", "request": {"name": "x"}, "after": ["b"]}],
     "items[1].after", "b → c → d → b"),
])
def test_a_cycle_is_named_from_its_first_listed_item(items: list[dict[str, Any]], field: str,
                                                     cycle: str) -> None:
    with pytest.raises(RequestError) as refused:
        plan_batch([BatchItem.model_validate(i) for i in items], KINDS)
    assert (refused.value.field, refused.value.reason) == (field, f"dependency cycle: {cycle}")


def test_items_without_prerequisites_keep_their_listed_order() -> None:
    """Their submission order is their order in the resource lines."""
    items = [BatchItem(key="a", kind="StopVm", request={"name": "x"}, after=["late"]),
             BatchItem(key="b", kind="StartVm", request={"name": "x"}),
             BatchItem(key="late", kind="StopVm", request={"name": "x"})]
    assert [task.key for task in plan_batch(items, KINDS)] == ["b", "late", "a"]


# --- case 8: every name taskomatic makes is valid input to its own CLI and library ----------


async def test_a_vm_named_with_dots_leaves_volumes_its_verbs_take(client: TaskomaticClient,
                                                                   lab: Lab) -> None:
    """``vm create a..b --disk-size 1GiB``, ``vm destroy --keep-disks``: the volume it made can
    be attached again and deleted, through the library and the CLI's own parsing."""
    host = lab.host()
    pool = pool_name(lab, "dots")
    await (await client.create_pool(CreatePoolRequest(name=pool, host=host.name,
                                                      path=pool_path(lab, "dots")))).result()
    vm = f"{lab.prefix}..b"
    await (await client.create_vm(CreateVmRequest(name=vm, disks=[
        DiskRequest(pool=pool, size="1GiB")]))).result()
    await (await client.destroy_vm(DestroyVmRequest(name=vm, keep_disks=True))).result()
    volume = f"{vm}-disk0.qcow2"
    assert libvirt_volumes(lab, host, pool) == [volume]
    again = lab.vm_name("again")
    await (await client.create_vm(validated(CreateVmRequest, name=again, disks=[
        {"volume": f"{pool}/{volume}"}]))).result()
    await (await client.destroy_vm(DestroyVmRequest(name=again, keep_disks=True))).result()
    await (await client.delete_volume(validated(DeleteVolumeRequest, pool=pool,
                                                name=volume))).result()
    assert libvirt_volumes(lab, host, pool) == []


VALID_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True)
VOLUME_NAME: TypeAdapter[str] = TypeAdapter(VolumeName)
VOLUME_PATH: TypeAdapter[str] = TypeAdapter(VolumePath)
TASK_ID: TypeAdapter[str] = TypeAdapter(TaskId)


@settings(max_examples=500, deadline=None)
@example(vm="a..b", pool="images", index=0, fmt="qcow2")
@example(vm="a" * 63, pool="p" * 63, index=15, fmt="qcow2")
@given(vm=VALID_NAME, pool=VALID_NAME, index=st.integers(0, 15),
       fmt=st.sampled_from(["qcow2", "raw"]))
def test_the_volumes_a_vm_owns_have_names_the_volume_verbs_take(vm: str, pool: str, index: int,
                                                                 fmt: str) -> None:
    req = CreateVmRequest(name=vm, disks=[DiskRequest(pool=pool, size="1GiB", format=fmt)]
                          * (index + 1))
    name = owned_volume_name(req.name, index, req.disks[index].format)
    assert VOLUME_NAME.validate_python(name) == name
    assert VOLUME_PATH.validate_python(f"{pool}/{name}") == f"{pool}/{name}"
    for model in (DeleteVolumeRequest, ResizeVolumeRequest):
        validated(model, pool=pool, name=name, **({"capacity": "2GiB"} if model is
                                                  ResizeVolumeRequest else {}))


@settings(max_examples=300, deadline=None)
@given(subject=VALID_NAME, vm=VALID_NAME, kind=st.sampled_from(sorted(KINDS)),
       child=st.sampled_from(["migrate", "stop"]))
def test_task_ids_and_child_task_ids_are_task_ids(subject: str, vm: str, kind: str,
                                                  child: str) -> None:
    root = new_task_id(KINDS[kind].slug, subject)
    assert TASK_ID.validate_python(root) == root and len(root) <= ROOT_TASK_ID_MAX
    below = child_task_id(root, child, vm)
    assert TASK_ID.validate_python(below) == below


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", fullmatch=True),
                     min_size=1, max_size=5, unique=True),
       kind=st.sampled_from(["StopVm", "ClearHost", "SetPoolAutostart"]), vm=VALID_NAME)
def test_batch_task_ids_are_task_ids_with_room_for_children(keys: list[str], kind: str,
                                                            vm: str) -> None:
    request = {"StopVm": {"name": "x"}, "ClearHost": {"host": "h"},
               "SetPoolAutostart": {"name": "p", "autostart": True}}[kind]
    plan = plan_batch([BatchItem(key=key, kind=kind, request=request) for key in keys], KINDS)
    for task in plan:
        assert TASK_ID.validate_python(task.task_id) and len(task.task_id) <= ROOT_TASK_ID_MAX
        assert TASK_ID.validate_python(child_task_id(task.task_id, "migrate", vm))


@pytest.mark.parametrize("key", ["a b", "x/y", "", "-a", "ü", "k" * 101])
def test_a_batch_key_that_would_make_a_bad_task_id_is_refused(key: str) -> None:
    with pytest.raises(RequestError) as refused:
        validated(BatchItem, key=key, kind="StopVm", request={"name": "x"})
    assert refused.value.field == "key"


@pytest.mark.parametrize("task_id", ["a b", "x" * (ROOT_TASK_ID_MAX + 1), "", "-x", "a/b"])
async def test_a_chosen_task_id_must_leave_room_for_its_children(client: TaskomaticClient,
                                                                 task_id: str) -> None:
    with pytest.raises(RequestError) as refused:
        await client.submit("Reconcile", ReconcileRequest(), task_id=task_id)
    assert refused.value.field == "task_id"


# --- case 7: one hypervisor is one host ------------------------------------------------------


def _respelled(uri: str, how: str) -> str:
    """``uri`` (``test:///dir/name.xml``) with its directory spelled another way."""
    directory, _, file = uri.removeprefix("test://").rpartition("/")
    return f"test://{directory}{how}{file}"


@pytest.mark.parametrize("how", ["/./", "//", "/.//./"])
async def test_a_hypervisor_is_not_registered_twice_under_another_spelling(
        client: TaskomaticClient, lab: Lab, how: str) -> None:
    """A URI spelled another way is refused on ``uri`` naming the host, probed or not."""
    host = lab.host()
    for probe in (True, False):
        with pytest.raises(RequestError) as refused:
            await client.add_host(HostSpec(name=f"{host.name}b", uri=_respelled(host.uri, how),
                                           vcpus=8, memory_mib=8192), probe=probe)
        assert refused.value.field == "uri" and repr(host.name) in refused.value.reason
    assert [h.name for h in await client.hosts() if h.name.startswith(host.name)] == [host.name]


async def test_a_hypervisor_is_known_by_its_identity_whatever_the_uri(
        client: TaskomaticClient, lab: Lab, host_dir: Path, tmp_path: Path) -> None:
    """A host registered before identities (none recorded) keeps working; adding it again
    records its identity; from then on a URI through a symlinked directory, which no spelling
    rule can see, is refused naming it."""
    host = lab.host()  # registered the old way: no identity
    record, created = await client.add_host(host)
    assert not created and record.hypervisor_id == f"test:{host.uri.removeprefix('test://')}"
    alias = tmp_path / "alias"
    alias.symlink_to(host_dir)
    other = HostSpec(name=f"{host.name}-alias", uri=host.uri.replace(str(host_dir), str(alias)),
                     vcpus=8, memory_mib=8192)
    with pytest.raises(RequestError) as refused:
        await client.add_host(other)
    assert refused.value.field == "uri" and f"host {host.name!r}" in refused.value.reason
    again, created = await client.add_host(host)  # the same name and URI: still a no-op
    assert not created and again.hypervisor_id == record.hypervisor_id


def test_the_test_driver_reports_no_host_uuid(hypervisors: Any, host_dir: Path) -> None:
    """Why a test-driver host's identity is its file (see ``taskomatic.hypervisor.identity``):
    if this ever fails, the driver reports a UUID and the docstring must change."""
    uri = write_test_host(host_dir, f"uuid-{uuid.uuid4().hex[:6]}", 1, 1024)
    conn = hypervisors.connection(uri)
    try:
        assert "<uuid>" not in conn.getCapabilities().split("<guest>")[0]
        assert host_identity(conn, uri) == f"test:{os.path.realpath(uri[len('test://'):])}"
    finally:
        hypervisors.forget(uri)
