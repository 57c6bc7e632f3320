"""Storage activities against libvirt test-driver hosts, called directly: idempotency, typed
errors, UUID-guarded undos; and the size parser and pool/volume XML they rely on."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import pytest
from helpers import app_error
from storage_helpers import libvirt_pools, pool_path

from activities.storage import StorageActivities
from conftest import Lab
from taskomatic.errors import ErrorType
from taskomatic.hypervisor import Hypervisors
from taskomatic.hypervisor.pool_xml import build_pool_xml, build_volume_xml
from taskomatic.inventory.db import Database
from taskomatic.models import (
    PoolAutostartInput,
    PoolRef,
    PoolSource,
    PoolSpec,
    PoolType,
    ResizeVolumeInput,
    VolumeRef,
    VolumeSpec,
    check_pool_path,
)
from taskomatic.units import GIB, MIB, TIB, format_size, parse_size


@pytest.fixture
def acts(hypervisors: Hypervisors, db: Database) -> StorageActivities:
    return StorageActivities(hypervisors, db)


def _spec(lab: Lab, label: str) -> PoolSpec:
    host = lab.host()
    return PoolSpec(host=host.name, uri=host.uri, name=f"p-{label}", uuid=str(uuid.uuid4()),
                    type=PoolType.DIR, path=pool_path(lab, label))


def test_pool_steps_are_idempotent(acts: StorageActivities, lab: Lab) -> None:
    spec = _spec(lab, "idem")
    ref = PoolRef(**spec.model_dump(include={"host", "uri", "name", "uuid"}))
    for activity, first, again in [
        (lambda: acts.define_pool(spec), "defined", "already defined"),
        (lambda: acts.build_pool(ref), "built", "built"),
        (lambda: acts.start_pool(ref), "started", "already active"),
        (lambda: acts.set_pool_autostart(PoolAutostartInput(**ref.model_dump(), autostart=True)),
         "autostart on", "autostart already on"),
        (lambda: acts.stop_pool(ref), "stopped", "already inactive"),
        (lambda: acts.undefine_pool(ref), "undefined", "already absent"),
    ]:
        one, two = activity(), activity()
        assert (one.changed, one.detail) == (True, first)
        assert two.detail == again
    assert libvirt_pools(lab, lab.hosts[0]) == {}


def test_undos_leave_a_pool_with_another_uuid_alone(acts: StorageActivities, lab: Lab) -> None:
    spec = _spec(lab, "guard")
    acts.define_pool(spec)
    acts.start_pool(spec)
    other = PoolRef(host=spec.host, uri=spec.uri, name=spec.name, uuid=str(uuid.uuid4()))
    assert acts.stop_pool(other).detail == "absent; nothing to stop"
    assert acts.delete_pool(other).detail == "absent; no storage to delete"
    assert "left alone" in acts.undefine_pool(other).detail
    assert libvirt_pools(lab, lab.hosts[0]) == {spec.name: (True, False)}
    # Defining the same name with another shape is a typed duplicate, naming the field.
    _, info = app_error(_raises(lambda: acts.define_pool(spec.model_copy(
        update={"path": pool_path(lab, "elsewhere")}))))
    assert (info.type, info.field) == (ErrorType.DUPLICATE_POOL, "name")


def test_volume_steps_are_idempotent_and_typed(acts: StorageActivities, lab: Lab) -> None:
    spec = _spec(lab, "vols")
    acts.define_pool(spec)
    ref = VolumeRef(host=spec.host, uri=spec.uri, pool=spec.name, name="v1.qcow2")
    vol = VolumeSpec(**ref.model_dump(), capacity=GIB)
    _, info = app_error(_raises(lambda: acts.create_volume(vol)))
    assert (info.type, info.field) == (ErrorType.INVALID_OPERATION, "pool")  # pool not active
    acts.start_pool(spec)
    made = acts.create_volume(vol)
    assert made.changed and made.volume is not None and made.volume.format == "qcow2"
    assert acts.create_volume(vol).detail == "already exists with the same shape"
    _, info = app_error(_raises(lambda: acts.create_volume(vol.model_copy(
        update={"capacity": 2 * GIB}))))
    assert (info.type, info.field) == (ErrorType.DUPLICATE_VOLUME, "name")
    _, info = app_error(_raises(lambda: acts.create_volume(vol.model_copy(
        update={"name": "v2", "clone_from": "nope"}))))
    assert (info.type, info.field) == (ErrorType.UNKNOWN_VOLUME, "clone_from")
    _, info = app_error(_raises(lambda: acts.resize_volume(ResizeVolumeInput(
        **ref.model_dump(), capacity=MIB))))
    assert (info.type, info.field) == (ErrorType.INVALID_REQUEST, "capacity")  # no shrinking
    assert acts.resize_volume(ResizeVolumeInput(**ref.model_dump(), capacity=GIB)).changed is False
    _, info = app_error(_raises(lambda: acts.resize_volume(ResizeVolumeInput(
        **ref.model_dump(), capacity=2 * GIB))))
    assert (info.type, info.libvirt_code) == (ErrorType.NOT_SUPPORTED, 3)
    scan = acts.refresh_pool(spec)
    assert [v.name for v in scan.volumes] == ["v1.qcow2"] and scan.active
    assert acts.delete_volume(ref).detail == "deleted"
    assert acts.delete_volume(ref).detail == "already absent"
    acts.undefine_pool(spec)


def _raises(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as err:
        return err
    raise AssertionError("expected an error")


@pytest.mark.parametrize(("text", "size"), [
    ("1GiB", GIB), ("512MiB", 512 * MIB), ("20G", 20 * GIB), ("1.5GiB", 3 * GIB // 2),
    ("2 TiB", 2 * TIB), ("10MB", 10_000_000), (4 * MIB, 4 * MIB), ("1048576", MIB),
])
def test_sizes_parse(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", 0, "0GiB", -1, "-1GiB", "1KiB", "65TiB", "1PiB",
                                  "lots", "1 GiB GiB", True, 1.5])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size_reads_back() -> None:
    assert [format_size(s) for s in (GIB, 512 * MIB, 3 * GIB // 2, None)] == [
        "1GiB", "512MiB", "1.5GiB", "-"]


def test_pool_paths_must_lie_strictly_under_a_root() -> None:
    roots = ["/var/lib/taskomatic/pools", "/srv/pools/"]
    assert check_pool_path("/var/lib/taskomatic/pools/a", roots) is None
    assert check_pool_path("/srv/pools/a/b", roots) is None
    for bad in ("/var/lib/taskomatic/pools", "/var/lib/taskomatic/poolsX", "/etc", "/srv"):
        assert check_pool_path(bad, roots) is not None, bad


def test_xml_is_built_from_elements_not_strings() -> None:
    spec = PoolSpec(host="h", uri="test:///x", name="n", type=PoolType.NETFS, path="/p/n",
                    source=PoolSource(host="nfs.example", dir="/exports/a"))
    root = ET.fromstring(build_pool_xml(spec))
    assert (root.get("type"), root.findtext("target/path")) == ("netfs", "/p/n")
    assert root.find("source/format").get("type") == "nfs"  # type: ignore[union-attr]
    vol = ET.fromstring(build_volume_xml(VolumeSpec(host="h", uri="u", pool="n", name="a&b",
                                                    capacity=GIB, format="raw")))
    assert (vol.findtext("name"), vol.findtext("capacity")) == ("a&b", str(GIB))
    assert vol.find("target/format").get("type") == "raw"  # type: ignore[union-attr]
