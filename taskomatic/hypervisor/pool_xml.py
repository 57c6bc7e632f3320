"""Storage pool and volume XML, built with ElementTree (never by string formatting)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from taskomatic.models import PoolSpec, PoolType, VolumeInfo, VolumeSpec


def build_pool_xml(spec: PoolSpec) -> str:
    root = ET.Element("pool", type=spec.type.value)
    ET.SubElement(root, "name").text = spec.name
    if spec.uuid:
        ET.SubElement(root, "uuid").text = spec.uuid
    src = spec.source
    if spec.type is PoolType.NETFS:
        source = ET.SubElement(root, "source")
        ET.SubElement(source, "host", name=str(src.host))
        ET.SubElement(source, "dir", path=str(src.dir))
        ET.SubElement(source, "format", type="nfs")
    elif spec.type is PoolType.LOGICAL:
        source = ET.SubElement(root, "source")
        for device in src.devices:
            ET.SubElement(source, "device", path=device)
        ET.SubElement(source, "name").text = src.name
        ET.SubElement(source, "format", type="lvm2")
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = spec.path
    return ET.tostring(root, encoding="unicode")


def pool_shape(xml: str) -> tuple[str, str, str]:
    """(uuid, type, target path) of a defined pool, to compare with a spec."""
    root = ET.fromstring(xml)
    return (root.findtext("uuid") or "", root.get("type", ""),
            root.findtext("target/path") or "")


def build_volume_xml(spec: VolumeSpec) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "capacity", unit="bytes").text = str(spec.capacity)
    if spec.format == "qcow2":  # sparse; a raw file keeps libvirt's default allocation
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type=spec.format)
    return ET.tostring(root, encoding="unicode")


def volume_info(name: str, xml: str, capacity: int, allocation: int) -> VolumeInfo:
    """A volume as libvirt describes it (its format from the XML; sizes from ``info()``)."""
    root = ET.fromstring(xml)
    fmt = root.find("target/format")
    return VolumeInfo(name=name, path=root.findtext("target/path") or "",
                      format=fmt.get("type", "raw") if fmt is not None else "raw",
                      capacity=capacity, allocation=allocation)
