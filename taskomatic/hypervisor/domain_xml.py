"""Domain XML, built with ElementTree (never by string formatting) and read back the same way."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NamedTuple

from taskomatic.models import DomainSpec


class DiskSource(NamedTuple):
    """Where a domain's disk (or a file backing it) lives: a path, or a pool's volume by name."""

    path: str | None = None
    pool: str | None = None
    volume: str | None = None


def domain_type(uri: str) -> str:
    """libvirt's domain type for a connection: the test driver's own, else QEMU (TCG)."""
    return "test" if uri.startswith("test:") else "qemu"


def build_domain_xml(spec: DomainSpec) -> str:
    """A guest: name, UUID, memory, vCPUs and its pool volumes as virtio disks."""
    dtype = domain_type(spec.uri)
    root = ET.Element("domain", type=dtype)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "uuid").text = spec.uuid
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    type_el = ET.SubElement(os_el, "type")
    type_el.text = "hvm"
    if dtype == "qemu":
        type_el.set("arch", "x86_64")
        ET.SubElement(root, "features").append(ET.Element("acpi"))
    if dtype == "qemu" or spec.disks:
        devices = ET.SubElement(root, "devices")
        for disk in spec.disks:
            el = ET.SubElement(devices, "disk", type="volume", device="disk")
            ET.SubElement(el, "driver", name="qemu", type=disk.format)
            ET.SubElement(el, "source", pool=disk.pool, volume=disk.volume)
            ET.SubElement(el, "target", dev=disk.target, bus="virtio")
        if dtype == "qemu":
            ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(devices, "memballoon", model="none")
    metadata = ET.SubElement(root, "metadata")
    ET.SubElement(metadata, "{https://taskomatic.dev/xmlns/1}managed").text = "true"
    ET.register_namespace("taskomatic", "https://taskomatic.dev/xmlns/1")
    return ET.tostring(root, encoding="unicode")


def shape_of(xml: str) -> tuple[str, int, int]:
    """(uuid, vcpus, memory in MiB) of a defined domain, to compare with a spec."""
    root = ET.fromstring(xml)
    memory = root.find("memory")
    units = {"KiB": 1 / 1024, "k": 1 / 1024, "MiB": 1, "M": 1, "GiB": 1024, "G": 1024}
    factor = units.get(memory.get("unit", "KiB"), 1 / 1024) if memory is not None else 0
    mib = int(int(memory.text or 0) * factor) if memory is not None else 0
    return (root.findtext("uuid") or "", int(root.findtext("vcpu") or 0), mib)


def disk_sources(xml: str) -> list[DiskSource]:
    """Every storage a domain's disks use, backing files included: a ``<source>`` with ``file``,
    ``dev`` or ``dir`` gives a path, one with ``pool`` and ``volume`` names a pool's volume.
    Network disks (no local storage) are left out."""
    found: list[DiskSource] = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        for source in disk.iter("source"):
            path = source.get("file") or source.get("dev") or source.get("dir")
            if path:
                found.append(DiskSource(path=path))
            elif source.get("pool") and source.get("volume"):
                found.append(DiskSource(pool=source.get("pool"), volume=source.get("volume")))
    return found
