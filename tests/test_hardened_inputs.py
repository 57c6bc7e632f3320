"""Property tests over every request model and CLI verb: arbitrary names, sizes, URIs and
unicode give either success or a clear error naming the field; never a traceback, never markup
injected into a domain definition, never a half-made resource."""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import cli_on_stack, named_field, run_cli, run_cli_async
from helpers import force_host_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Lab
from starter.cli import common
from starter.client import RequestError, TaskError, TaskomaticClient, validated
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml, shape_of
from taskomatic.inventory.db import Database
from taskomatic.logs import configure_logging
from taskomatic.models import (
    ClusterSpec,
    CreateVmRequest,
    DestroyVmRequest,
    DomainSpec,
    HostSpec,
    HostState,
    StartVmRequest,
    StopVmRequest,
)

# Anything a shell can pass in argv: no NUL, no lone surrogates.
ARG_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                   max_size=80)
NAMEISH = st.one_of(ARG_TEXT, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),
                    st.sampled_from(["web1", "a<b", "x'>", "]]>", "&amp;", "vm\n", "ü", ""]))
NUMBERISH = st.one_of(st.integers(), st.floats(allow_nan=True), ARG_TEXT,
                      st.integers(-10, 10**7).map(str), st.sampled_from(["1e3", "0x10", "-0"]))
URIISH = st.one_of(ARG_TEXT, st.builds(
    lambda scheme, host, path, query: f"{scheme}://{host}/{path}{query}",
    st.sampled_from(["test", "qemu", "qemu+tls", "qemu+ssh", "xen+tcp", "http", "qemu+evil"]),
    st.sampled_from(["", "kvm1", "u@kvm1:22", "[::1]", "a b", "h<x>"]),
    st.sampled_from(["system", "default", "tmp/h.xml", "%00", "a\"b"]),
    st.sampled_from(["", "?pkipath=/etc/pki", "?pkipath=rel", "?no_verify=2", "?keyfile=/k",
                     "?socket=/run/s", "?x", "?known_hosts=/kh&no_tty=1"])))
ANY = st.one_of(st.none(), st.booleans(), NUMBERISH, NAMEISH, st.lists(NAMEISH, max_size=3))

MODELS: dict[type[Any], dict[str, st.SearchStrategy[Any]]] = {
    CreateVmRequest: {"name": NAMEISH, "vcpus": NUMBERISH, "memory_mib": NUMBERISH,
                      "host": st.one_of(st.none(), NAMEISH), "start": ANY,
                      "cluster": st.one_of(st.none(), NAMEISH),
                      "group": st.one_of(st.none(), NAMEISH), "group_policy": ANY},
    StartVmRequest: {"name": NAMEISH},
    StopVmRequest: {"name": NAMEISH, "force": ANY, "timeout_seconds": NUMBERISH},
    DestroyVmRequest: {"name": NAMEISH},
    HostSpec: {"name": NAMEISH, "uri": URIISH, "vcpus": NUMBERISH, "memory_mib": NUMBERISH,
               "cluster": st.one_of(st.none(), NAMEISH)},
    ClusterSpec: {"name": NAMEISH, "hypervisor_type": NAMEISH,
                  "cpu_model": st.one_of(st.none(), NAMEISH), "vcpu_overcommit": NUMBERISH,
                  "memory_overcommit": NUMBERISH, "weigher": ANY},
}
COMMON = {"requested_by": st.one_of(st.none(), ARG_TEXT), "after": st.one_of(
    st.lists(NAMEISH, max_size=3), ANY)}


@st.composite
def request_fields(draw: st.DrawFn, model: type[Any]) -> dict[str, Any]:
    fields = {**MODELS[model], **({} if model in (HostSpec, ClusterSpec) else COMMON)}
    chosen = draw(st.sets(st.sampled_from(sorted(fields))))
    data = {key: draw(fields[key]) for key in chosen}
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        data[draw(NAMEISH) or "extra"] = draw(ANY)  # an unknown field: a typo must not pass
    return data


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_request_models_accept_or_name_the_field(model: type[Any], data: st.DataObject) -> None:
    fields = data.draw(request_fields(model))
    try:
        req = validated(model, **fields)
    except RequestError as err:
        assert err.field, err
        # a field of the model ("after.0" for an item), or the unknown key exactly as given
        assert err.field.split(".")[0] in model.model_fields or err.field in fields, (
            err.field, fields)
        assert err.reason and "Traceback" not in err.reason
        return
    assert isinstance(req, model)
    if isinstance(req, CreateVmRequest):
        _assert_domain_xml_is_exactly(req.name, req.vcpus, req.memory_mib)
    if isinstance(req, HostSpec):
        assert not set(req.uri) & set("<>\"' \n\r\t")


def _assert_domain_xml_is_exactly(name: str, vcpus: int, memory_mib: int) -> None:
    for uri in ("test:///default", "qemu+tls://kvm1/system"):
        uid = str(uuid.uuid4())
        xml = build_domain_xml(DomainSpec(host="h", uri=uri, name=name, uuid=uid, vcpus=vcpus,
                                          memory_mib=memory_mib))
        root = ET.fromstring(xml)
        assert root.findtext("name") == name and len(root.findall("name")) == 1
        assert shape_of(xml) == (uid, vcpus, memory_mib)
        expected = {"name", "uuid", "memory", "vcpu", "os", "metadata"}
        if not uri.startswith("test:"):
            expected |= {"features", "devices"}
        assert {child.tag for child in root} == expected  # nothing smuggled in


# XML 1.0 characters (minus \r, which every parser folds into \n).
XML_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
                   | st.sampled_from("\t\n"), min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(name=XML_TEXT)
def test_domain_xml_never_takes_markup_from_a_name(name: str) -> None:
    """Even past validation (which allows none of these), a name is only ever element text."""
    _assert_domain_xml_is_exactly(name, 1, 64)


# --- the CLI, in-process: parse and validate, stop before submission ---------------------------


class _Stopped(common.ServiceUnavailable):
    pass


async def _no_stack() -> Any:
    raise _Stopped("stopped before submission (no stack in this test)")


def _optional(flag: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [flag, str(v)]))


VERBS: dict[str, st.SearchStrategy[list[str]]] = {
    "vm create": st.tuples(
        NAMEISH.map(lambda n: [n]), _optional("--vcpus", NUMBERISH),
        _optional("--memory-mib", NUMBERISH), _optional("--host", NAMEISH),
        _optional("--cluster", NAMEISH), _optional("--group", NAMEISH),
        _optional("--group-policy", ARG_TEXT),
        st.sampled_from([[], ["--start"]]), _optional("--requested-by", ARG_TEXT),
        _optional("--after", NAMEISH), st.sampled_from([[], ["--wait"], ["--json"]])),
    "vm start": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--after", NAMEISH)),
    "vm stop": st.tuples(NAMEISH.map(lambda n: [n]), st.sampled_from([[], ["--force"]]),
                         _optional("--timeout", NUMBERISH), _optional("--requested-by", ARG_TEXT)),
    "vm destroy": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--requested-by", ARG_TEXT)),
    "host add": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--uri", URIISH),
                          _optional("--vcpus", NUMBERISH), _optional("--memory-mib", NUMBERISH),
                          _optional("--cluster", NAMEISH), st.sampled_from([[], ["--no-probe"]])),
    "cluster create": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--hypervisor-type",
                                                                       NAMEISH),
                                _optional("--cpu-model", NAMEISH),
                                _optional("--vcpu-overcommit", NUMBERISH),
                                _optional("--memory-overcommit", NUMBERISH),
                                _optional("--weigher", ARG_TEXT)),
    "cluster show": st.tuples(NAMEISH.map(lambda n: [n])),
    "vm list": st.tuples(_optional("--host", NAMEISH)),
    "tasks list": st.tuples(_optional("--vm", NAMEISH), _optional("--state", ARG_TEXT)),
    "tasks show": st.tuples(NAMEISH.map(lambda n: [n])),
}


@pytest.fixture
def cli_without_stack(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(common, "connect", _no_stack)
    yield
    configure_logging("console", "info")


@pytest.mark.parametrize("verb", list(VERBS))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_verbs_refuse_clearly_or_reach_submission(cli_without_stack: Any, verb: str,
                                                      data: st.DataObject) -> None:
    parts = data.draw(VERBS[verb])
    argv = [*verb.split(), *[arg for part in parts for arg in part]]
    code, stderr = run_cli(argv)
    assert "Traceback" not in stderr, (argv, stderr)
    if code == 3:  # passed parsing and validation: it would have been submitted now
        assert "stopped before submission" in stderr, (argv, stderr)
        return
    assert code == 2, (argv, code, stderr)
    named = re.search(r"error: ([a-z_]+(\.[0-9a-z_]+)*):", stderr)
    argparse_said = "usage: taskomatic" in stderr
    assert named or argparse_said, (argv, stderr)


# --- against the real stack: whatever the sizes, nothing is left half-made ---------------------


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vcpus=st.integers(-1, 12), memory_mib=st.sampled_from([0, 15, 64, 4096, 8192, 9000]),
       pinned=st.booleans())
async def test_creates_of_any_size_succeed_or_leave_nothing(
        client: TaskomaticClient, db: Database, hypervisors: Hypervisors, host_dir: Path,
        vcpus: int, memory_mib: int, pinned: bool) -> None:
    lab = Lab(db, hypervisors, host_dir)
    host = lab.host(vcpus=8, memory_mib=8192)
    name = lab.vm_name("any")
    try:
        req = validated(CreateVmRequest, name=name, vcpus=vcpus, memory_mib=memory_mib,
                        host=host.name if pinned else None)
        task = await client.create_vm(req.model_copy(update={"host": host.name}))
        try:
            await task.result()
        except TaskError as err:
            assert err.failure.error_type == "NoCapacity" and err.failure.field == "host"
            assert not err.failure.compensation_failed
        else:
            assert lab.domains(host) == {name: False}
            assert inventory.get_vm(db, name) is not None
            await (await client.destroy_vm(DestroyVmRequest(name=name))).result()
    except RequestError as err:
        assert err.field in {"vcpus", "memory_mib"}
    assert lab.domains(host) == {}
    assert inventory.get_vm(db, name) is None
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM reservations WHERE vm_name = %s", (name,))
        assert cur.fetchone() == {"n": 0}
    force_host_state(db, host.name, HostState.DOWN)


# --- against the real stack: unknown and malformed ids, names and files ----------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HEX = st.text("0123456789abcdef", min_size=8, max_size=8)
UNKNOWN_NAME = HEX.map(lambda h: f"ghost-{h}")
BAD_NAME = st.one_of(
    st.sampled_from(["a b", "x/y", "..", "ü", "a<b", "", "a'b", "x" * 64, "vm\n", ".hidden",
                     "_x", "a;b", "$(id)"]),
    ARG_TEXT.filter(lambda t: not _NAME_RE.fullmatch(t)))
NAME_ARG = st.one_of(UNKNOWN_NAME, BAD_NAME)
TASK_ID_ARG = st.one_of(HEX.map(lambda h: f"vm-stop-ghost-{h}"), BAD_NAME,
                        st.sampled_from(["no-such-task", "x" * 201, "a:b/c"]))
VOLUME_ARG = st.one_of(
    st.tuples(NAME_ARG, st.sampled_from(["d.qcow2", "a..b", "..", "", "x/y", "ü"])).map("/".join),
    st.sampled_from(["p", "/x", "p/", "a b/c", "//", "p//v"]))
FRESH = HEX.map(lambda h: f"fresh-{h}")  # a well-formed name nothing has
NEW_VM = ["--vcpus", "1", "--memory-mib", "64"]
_FILE_TEXTS = ["", "{", "[]", "{}", "null", '{"tasks": 3}', "\x00\x01", '[{"key": "a b", '
               '"kind": "StopVm"}]', '[{"key": "a", "kind": "Nope"}]', '[{"key": "a"}]',
               '[{"key": "a", "kind": "StopVm", "request": {"name": "ghost-00000000"}}]',
               '[{"key": "a", "kind": "StopVm", "request": {"name": "a b"}}]',
               '[{"key": "a", "kind": "StopVm", "request": {"name": "x"}, "after": ["a"]}]',
               '[{"key": "a", "kind": "StopVm", "request": {"name": "x"}, "after": ["no-task"]}]']
FILE_CONTENT = st.one_of(st.sampled_from(_FILE_TEXTS), st.binary(max_size=40),
                         ARG_TEXT.map(lambda t: t.encode()))

# verb → (its arguments, the fields a refusal may name). ``{}`` in the arguments is the drawn
# value; every case must be refused (exit 2) naming one of the fields, never a traceback.
CASES: dict[str, tuple[list[str], st.SearchStrategy[str], set[str]]] = {
    "vm start": (["vm", "start", "{}"], NAME_ARG, {"name"}),
    "vm stop": (["vm", "stop", "{}", "--force"], NAME_ARG, {"name"}),
    "vm destroy": (["vm", "destroy", "{}"], NAME_ARG, {"name"}),
    "vm migrate": (["vm", "migrate", "{}"], NAME_ARG, {"name"}),
    "vm migrate --to": (["vm", "migrate", "{}", "--to", "{}"], NAME_ARG, {"name", "to"}),
    "vm create --host": (["vm", "create", "<fresh>", *NEW_VM, "--host", "{}"], NAME_ARG,
                         {"host"}),
    "vm create --cluster": (["vm", "create", "<fresh>", *NEW_VM, "--cluster", "{}"], NAME_ARG,
                            {"cluster"}),
    "vm create --group": (["vm", "create", "<fresh>", *NEW_VM, "--group", "{}"], BAD_NAME,
                          {"group"}),
    "cluster show": (["cluster", "show", "{}"], NAME_ARG, {"name"}),
    "host add --cluster": (["host", "add", "<fresh>", "--uri", "test:///nonexistent/<fresh>.xml",
                            "--no-probe", "--vcpus", "1", "--memory-mib", "64", "--cluster",
                            "{}"], NAME_ARG, {"cluster"}),
    "vm create --disk": (["vm", "create", "<fresh>", *NEW_VM, "--disk", "{}"], VOLUME_ARG,
                         {"disks.0.volume"}),
    "vm create --pool": (["vm", "create", "<fresh>", *NEW_VM, "--disk-size", "1GiB", "--pool",
                          "{}"], NAME_ARG, {"disks.0.pool"}),
    **{f"{verb} --after": ([*verb.split(), *args, "--after", "{}"], TASK_ID_ARG,
                           {"after", "after.0"})
       for verb, args in (("vm start", ["<fresh>"]), ("vm stop", ["<fresh>"]),
                          ("vm destroy", ["<fresh>"]), ("vm migrate", ["<fresh>"]),
                          ("vm create", ["<fresh>", *NEW_VM]), ("host clear", ["<fresh>"]),
                          ("host activate", ["<fresh>"]), ("host restore", ["<fresh>"]),
                          ("pool create", ["<fresh>", "--host", "<fresh>", "--path",
                                           "/var/lib/taskomatic/pools/x"]),
                          ("pool destroy", ["<fresh>"]), ("pool refresh", ["<fresh>"]),
                          ("pool autostart", ["<fresh>", "off"]),
                          ("volume create", ["<fresh>/v.qcow2", "--size", "1GiB"]),
                          ("volume delete", ["<fresh>/v.qcow2"]),
                          ("volume resize", ["<fresh>/v.qcow2", "--size", "2GiB"]))},
    "vm list --host": (["vm", "list", "--host", "{}"], NAME_ARG, {"host"}),
    "host clear": (["host", "clear", "{}"], NAME_ARG, {"host"}),
    "host activate": (["host", "activate", "{}"], NAME_ARG, {"host"}),
    "host restore": (["host", "restore", "{}"], NAME_ARG, {"host"}),
    "host add": (["host", "add", "{}", "--uri", "test:///default"], BAD_NAME, {"name"}),
    "host add --uri": (["host", "add", "<fresh>", "--uri", "test:///nonexistent/{}.xml"],
                       NAME_ARG, {"uri"}),
    "pool create --host": (["pool", "create", "<fresh>", "--host", "{}", "--path",
                            "/var/lib/taskomatic/pools/x"], NAME_ARG, {"host"}),
    "pool destroy": (["pool", "destroy", "{}"], NAME_ARG, {"name"}),
    "pool refresh": (["pool", "refresh", "{}"], NAME_ARG, {"name"}),
    "pool autostart": (["pool", "autostart", "{}", "on"], NAME_ARG, {"name"}),
    "pool list --host": (["pool", "list", "--host", "{}"], NAME_ARG, {"host"}),
    "volume create": (["volume", "create", "{}", "--size", "1GiB"], VOLUME_ARG,
                      {"volume", "pool", "name"}),
    "volume create --clone-from": (["volume", "create", "<fresh>/v.qcow2", "--size", "1GiB",
                                    "--clone-from", "{}"], NAME_ARG, {"pool", "clone_from"}),
    "volume delete": (["volume", "delete", "{}"], VOLUME_ARG, {"volume", "pool", "name"}),
    "volume resize": (["volume", "resize", "{}", "--size", "2GiB"], VOLUME_ARG,
                      {"volume", "pool", "name"}),
    "volume list --pool": (["volume", "list", "--pool", "{}"], NAME_ARG, {"pool"}),
    "tasks show": (["tasks", "show", "{}"], TASK_ID_ARG, {"id"}),
    "tasks cancel": (["tasks", "cancel", "{}"], TASK_ID_ARG, {"id"}),
    "tasks list --vm": (["tasks", "list", "--vm", "{}"], BAD_NAME, {"vm"}),
    "tasks list --host": (["tasks", "list", "--host", "{}"], BAD_NAME, {"host"}),
    "tasks list --pool": (["tasks", "list", "--pool", "{}"], BAD_NAME, {"pool"}),
    "tasks list --kind": (["tasks", "list", "--kind", "{}"], NAME_ARG, {"kind"}),
    "tasks watch --vm": (["tasks", "watch", "--times", "1", "--vm", "{}"], BAD_NAME, {"vm"}),
    "reconcile now --after": (["reconcile", "now", "--after", "{}"], TASK_ID_ARG,
                              {"after", "after.0"}),
    "batch --after": (["batch", "<file>", "--after", "{}"], TASK_ID_ARG, {"after", "after.0"}),
}


def _argv(template: list[str], value: str, fresh: str, file: Path) -> list[str]:
    return [part.replace("{}", value).replace("<fresh>", fresh).replace("<file>", str(file))
            for part in template]


@pytest.mark.parametrize("case", list(CASES))
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_every_verb_refuses_unknown_and_malformed_values_naming_the_field(
        monkeypatch: pytest.MonkeyPatch, temporal_env: Any, settings: Any, worker: Any,
        tmp_path: Path, case: str, data: st.DataObject) -> None:
    template, values, fields = CASES[case]
    value = data.draw(values, label="value")
    good_batch = tmp_path / "good.json"
    good_batch.write_text(json.dumps([{"key": "a", "kind": "Reconcile"}]))
    argv = _argv(template, value, data.draw(FRESH), good_batch)
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        code, stderr = await run_cli_async(argv)
    assert "Traceback" not in stderr, (argv, stderr)
    assert code == 2, (argv, code, stderr)
    assert named_field(stderr) in fields or "usage: taskomatic" in stderr, (argv, stderr)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.none(), FILE_CONTENT), as_dir=st.booleans())
async def test_batch_refuses_unreadable_and_malformed_files_naming_the_field(
        monkeypatch: pytest.MonkeyPatch, temporal_env: Any, settings: Any, worker: Any,
        tmp_path: Path, content: bytes | str | None, as_dir: bool) -> None:
    """A missing file, a directory, bytes that are not UTF-8 or not JSON, JSON of the wrong
    shape, bad items: exit 2 naming ``file``, ``tasks``, the item's field, or ``after`` for a
    prerequisite outside the batch that does not exist."""
    path = tmp_path / f"batch-{uuid.uuid4().hex[:6]}.json"
    if as_dir:
        path.mkdir()
    elif content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    with cli_on_stack(monkeypatch, temporal_env, settings, worker):
        code, stderr = await run_cli_async(["batch", str(path)])
    assert "Traceback" not in stderr, (content, stderr)
    assert code == 2, (content, code, stderr)
    field = named_field(stderr) or ""
    assert field in ("file", "tasks", "after") or field.startswith("tasks["), (content, stderr)
