"""Request validation: bad input is refused before a task exists, and the error names the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

from taskomatic.models import (
    CreateVmRequest,
    DestroyVmRequest,
    HostSpec,
    StartVmRequest,
    StopVmRequest,
)

# The documented rule, written out independently of the implementation's regex.
ALLOWED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", re.ASCII)
XML_METACHARS = set("<>&\"'")

VALID_URI = "test:///var/lib/taskomatic/h1.xml"

# (model, the other fields a valid instance needs, the name-typed field under test)
NAME_FIELDS: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (CreateVmRequest, {}, "name"),
    (CreateVmRequest, {"name": "vm1"}, "host"),
    (StartVmRequest, {}, "name"),
    (StopVmRequest, {}, "name"),
    (DestroyVmRequest, {}, "name"),
    (HostSpec, {"uri": VALID_URI}, "name"),
]
BAD_NAMES = [
    "web 01", " web", "web ", "a<b", "a>b", "a&b", 'a"b', "a'b", "a/b", "../etc", "a\\b",
    "", "a" * 64, "x" * 1000, "-web", ".web", "_web", "vm\n", "a\tb", "a\x00b", "café",
    "vm-ü", "\uff56\uff4d", "\u0663vm", "vm😀", "a;b", "a:b", "a@b", "a%2Fb",
]
GOOD_NAMES = ["a", "0", "web-01", "web_01.prod", "A" * 63, "9.9.9", "a-"]


def _only_error(exc: ValidationError) -> dict[str, Any]:
    errors = exc.errors(include_url=False)
    assert len(errors) == 1, errors
    return dict(errors[0])


def _refused(model: type[BaseModel], data: dict[str, Any], field: str) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    error = _only_error(caught.value)
    assert error["loc"] == (field,), error
    return error


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
@pytest.mark.parametrize(("model", "base", "field"), NAME_FIELDS,
                         ids=[f"{m.__name__}.{f}" for m, _, f in NAME_FIELDS])
def test_bad_names_are_refused_naming_the_field(model: type[BaseModel], base: dict[str, Any],
                                                field: str, bad: str) -> None:
    error = _refused(model, {**base, field: bad}, field)
    assert error["type"] == "value_error"
    assert "1-63 characters" in error["msg"]


@pytest.mark.parametrize("good", GOOD_NAMES)
@pytest.mark.parametrize(("model", "base", "field"), NAME_FIELDS,
                         ids=[f"{m.__name__}.{f}" for m, _, f in NAME_FIELDS])
def test_good_names_are_accepted_unchanged(model: type[BaseModel], base: dict[str, Any],
                                           field: str, good: str) -> None:
    assert getattr(model.model_validate({**base, field: good}), field) == good


@pytest.mark.parametrize("missing", [StartVmRequest, StopVmRequest, DestroyVmRequest,
                                     CreateVmRequest])
def test_name_is_required(missing: type[BaseModel]) -> None:
    assert _refused(missing, {}, "name")["type"] == "missing"


@pytest.mark.parametrize(("value", "kind"), [
    (0, "greater_than_equal"), (-1, "greater_than_equal"), (257, "less_than_equal"),
    (10**9, "less_than_equal"), (1.5, "int_from_float"), ("two", "int_parsing"),
    (None, "int_type"),
])
def test_vcpus_out_of_range(value: object, kind: str) -> None:
    assert _refused(CreateVmRequest, {"name": "vm1", "vcpus": value}, "vcpus")["type"] == kind


@pytest.mark.parametrize("value", [1, 2, 256])
def test_vcpus_in_range(value: int) -> None:
    assert CreateVmRequest(name="vm1", vcpus=value).vcpus == value


@pytest.mark.parametrize(("value", "kind"), [
    (0, "greater_than_equal"), (-5, "greater_than_equal"), (15, "greater_than_equal"),
    (10**12, "less_than_equal"), (4 * 1024 * 1024 + 1, "less_than_equal"),
])
def test_memory_out_of_range(value: int, kind: str) -> None:
    error = _refused(CreateVmRequest, {"name": "vm1", "memory_mib": value}, "memory_mib")
    assert error["type"] == kind


@pytest.mark.parametrize("value", [16, 512, 4 * 1024 * 1024])
def test_memory_in_range(value: int) -> None:
    assert CreateVmRequest(name="vm1", memory_mib=value).memory_mib == value


@pytest.mark.parametrize(("value", "kind"), [
    (0, "greater_than"), (-1, "greater_than"), (4000, "less_than_equal"),
    (3600.5, "less_than_equal"), ("soon", "float_parsing"),
])
def test_stop_timeout_out_of_range(value: object, kind: str) -> None:
    error = _refused(StopVmRequest, {"name": "vm1", "timeout_seconds": value}, "timeout_seconds")
    assert error["type"] == kind


@pytest.mark.parametrize("value", [0.001, 1, 3600, None])
def test_stop_timeout_in_range(value: float | None) -> None:
    assert StopVmRequest(name="vm1", timeout_seconds=value).timeout_seconds == value


@pytest.mark.parametrize(("field", "value"), [
    ("vcpus", 0), ("vcpus", 65_537), ("memory_mib", 63), ("memory_mib", 64 * 1024 * 1024 + 1),
])
def test_host_capacity_out_of_range(field: str, value: int) -> None:
    _refused(HostSpec, {"name": "h1", "uri": VALID_URI, field: value}, field)


@pytest.mark.parametrize("uri", [
    "http://x", "https://host/system", "", "   ", "test:///x y", "test:///x<y", 'test:///x"y',
    "test:///x'y", "test:///x\ny", "qemu+http://h/system", "qemu+tcp+tls://h/system",
    "/var/run/libvirt", "default", "esx://h", "qemu+tcp://[::1/system",
])
def test_bad_uris_are_refused(uri: str) -> None:
    assert _refused(HostSpec, {"name": "h1", "uri": uri}, "uri")["type"] == "value_error"


@pytest.mark.parametrize("uri", [
    "test:///default", VALID_URI, "qemu:///system", "qemu+tls://hv1.example/system",
    "qemu+ssh://root@hv1/system?keyfile=/k", "xen+tcp://hv2:16509/", "lxc:///",
])
def test_good_uris_are_accepted(uri: str) -> None:
    assert HostSpec(name="h1", uri=uri).uri == uri


@pytest.mark.parametrize(("model", "base"), [
    (CreateVmRequest, {"name": "vm1"}),
    (StartVmRequest, {"name": "vm1"}),
    (StopVmRequest, {"name": "vm1"}),
    (DestroyVmRequest, {"name": "vm1"}),
    (HostSpec, {"name": "h1", "uri": VALID_URI}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
@pytest.mark.parametrize("extra", ["vcpu", "memory", "Name", "hostname", "forced"])
def test_unknown_fields_are_refused(model: type[BaseModel], base: dict[str, Any],
                                    extra: str) -> None:
    assert _refused(model, {**base, extra: 1}, extra)["type"] == "extra_forbidden"


def test_several_errors_each_name_their_field() -> None:
    with pytest.raises(ValidationError) as caught:
        CreateVmRequest.model_validate({"name": "a b", "vcpus": 0, "memory_mib": 1,
                                        "host": "x/y", "colour": "red"})
    assert {e["loc"] for e in caught.value.errors()} == {
        ("name",), ("vcpus",), ("memory_mib",), ("host",), ("colour",)}


# --- property-based ---------------------------------------------------------------------------

if HAVE_HYPOTHESIS:  # not a declared dependency: the properties run where it is installed
    _NAMEISH = st.text(alphabet=st.sampled_from("aZ09-_. <>&\"'/\\é\n\x00"), max_size=70)

    @given(st.one_of(st.text(max_size=80), _NAMEISH))
    def test_any_text_name_validates_only_if_it_matches_the_rule(name: str) -> None:
        try:
            req = StartVmRequest(name=name)
        except ValidationError as exc:
            assert [e["loc"] for e in exc.errors()] == [("name",)]
            assert not ALLOWED_NAME.fullmatch(name)
        else:
            assert req.name == name
            assert ALLOWED_NAME.fullmatch(name)
            assert not XML_METACHARS & set(name)

    @given(st.from_regex(ALLOWED_NAME, fullmatch=True))
    def test_every_name_matching_the_rule_validates(name: str) -> None:
        assert DestroyVmRequest(name=name).name == name

    @given(st.integers(min_value=-(10**12), max_value=10**12),
           st.integers(min_value=-(10**13), max_value=10**13))
    def test_capacity_validates_exactly_within_bounds(vcpus: int, memory_mib: int) -> None:
        ok = 1 <= vcpus <= 256 and 16 <= memory_mib <= 4 * 1024 * 1024
        try:
            req = CreateVmRequest(name="vm1", vcpus=vcpus, memory_mib=memory_mib)
        except ValidationError as exc:
            assert not ok
            assert {e["loc"] for e in exc.errors()} <= {("vcpus",), ("memory_mib",)}
        else:
            assert ok and (req.vcpus, req.memory_mib) == (vcpus, memory_mib)

    @given(st.one_of(st.text(max_size=60),
                     st.builds(lambda s, rest: s + rest,
                               st.sampled_from(["test://", "qemu+tcp://", "http://", "xen:"]),
                               st.text(max_size=40))))
    def test_any_text_uri_is_valid_or_refused_on_the_uri_field(uri: str) -> None:
        try:
            spec = HostSpec(name="h1", uri=uri)
        except ValidationError as exc:
            assert [e["loc"] for e in exc.errors()] == [("uri",)]
        else:
            assert spec.uri == uri
            assert not set(uri) & set("<>\"' \n\r\t")
            assert re.match(r"(?i)(test|qemu|xen|lxc)(\+[a-z0-9]+)?:", uri)
