"""Property tests over every request model and CLI verb: arbitrary names, sizes, URIs and
unicode give either success or a clear error naming the field; never a traceback, never markup
injected into a domain definition, never a half-made resource."""

from __future__ import annotations

import contextlib
import io
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers import force_host_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Lab
from starter.cli import common
from starter.cli import main as cli
from starter.client import RequestError, TaskError, TaskomaticClient, validated
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.domain_xml import build_domain_xml, shape_of
from taskomatic.inventory.db import Database
from taskomatic.logs import configure_logging
from taskomatic.models import (
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
                      "host": st.one_of(st.none(), NAMEISH), "start": ANY},
    StartVmRequest: {"name": NAMEISH},
    StopVmRequest: {"name": NAMEISH, "force": ANY, "timeout_seconds": NUMBERISH},
    DestroyVmRequest: {"name": NAMEISH},
    HostSpec: {"name": NAMEISH, "uri": URIISH, "vcpus": NUMBERISH, "memory_mib": NUMBERISH},
}
COMMON = {"requested_by": st.one_of(st.none(), ARG_TEXT), "after": st.one_of(
    st.lists(NAMEISH, max_size=3), ANY)}


@st.composite
def request_fields(draw: st.DrawFn, model: type[Any]) -> dict[str, Any]:
    fields = {**MODELS[model], **({} if model is HostSpec else COMMON)}
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
        st.sampled_from([[], ["--start"]]), _optional("--requested-by", ARG_TEXT),
        _optional("--after", NAMEISH), st.sampled_from([[], ["--wait"], ["--json"]])),
    "vm start": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--after", NAMEISH)),
    "vm stop": st.tuples(NAMEISH.map(lambda n: [n]), st.sampled_from([[], ["--force"]]),
                         _optional("--timeout", NUMBERISH), _optional("--requested-by", ARG_TEXT)),
    "vm destroy": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--requested-by", ARG_TEXT)),
    "host add": st.tuples(NAMEISH.map(lambda n: [n]), _optional("--uri", URIISH),
                          _optional("--vcpus", NUMBERISH), _optional("--memory-mib", NUMBERISH),
                          st.sampled_from([[], ["--no-probe"]])),
    "vm list": st.tuples(_optional("--host", NAMEISH)),
    "tasks list": st.tuples(_optional("--vm", NAMEISH), _optional("--state", ARG_TEXT)),
    "tasks show": st.tuples(NAMEISH.map(lambda n: [n])),
}


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        else:
            code = 0
    return code, " ".join(err.getvalue().split())


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
    code, stderr = _run_cli(argv)
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
