"""A move with a storage copy, as libvirt sees it (``VIR_MIGRATE_NON_SHARED_DISK``): whether the
domain can move so, and the destination's domain XML with its copied disks on the destination's
volumes. The volumes themselves are made and deleted by the storage activities.

The rule (taskomatic's): a storage copy needs a live migration — a running domain between
hypervisors that migrate (QEMU copies the disks over NBD while the guest runs). A shut-off
domain, or a driver that cannot migrate (the test driver), is refused with the reason rather
than copied volume by volume: the operator starts the VM, or moves it with its disks by hand.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import libvirt

from taskomatic.hypervisor.connections import Hypervisors, lookup
from taskomatic.models import HostRef, VolumeCopy


def copy_refusal(hv: Hypervisors, source: HostRef, destination: HostRef, name: str
                 ) -> str | None:
    """Why domain ``name`` on ``source`` cannot move to ``destination`` with a storage copy now,
    or None when it can (it runs there, and both drivers migrate live). From libvirt:
    ``isActive()`` of the domain on the source. Errors: libvirt errors typed by
    ``Hypervisors.call``."""
    if any(h.uri.startswith("test:") for h in (source, destination)):
        return (f"a storage copy needs a live migration, which the test driver of "
                f"{source.name if source.uri.startswith('test:') else destination.name} "
                "cannot do")
    with hv.call("check storage copy of", source.uri, source.name, name) as conn:
        dom = lookup(conn, name)
        if dom is None:
            return f"libvirt has no {name} on {source.name}"
        if not dom.isActive():
            return (f"{name} is shut off: a storage copy needs a live migration; start it "
                    "first")
    return None


def retargeted_xml(dom: libvirt.virDomain, copies: Sequence[VolumeCopy]) -> str:
    """The domain's migratable XML (``VIR_DOMAIN_XML_MIGRATABLE``) with each copied disk (by
    target) on its destination pool: ``<source pool=... volume=...>`` names ``copy.pool``."""
    return retarget_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), copies)


def retarget_disks(xml: str, copies: Sequence[VolumeCopy]) -> str:
    """``xml`` (a domain) with the disks of ``copies`` (matched by ``<target dev>``) pointing at
    ``copy.pool``/``copy.volume``. A disk given by file path becomes a volume disk. Raises
    ValueError if a copy's target is not a disk of the domain."""
    root = ET.fromstring(xml)
    by_target = {c.target: c for c in copies}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        copy = by_target.pop(target.get("dev", "") if target is not None else "", None)
        if copy is None:
            continue
        source = disk.find("source")
        if source is None:
            source = ET.SubElement(disk, "source")
        source.attrib.clear()
        source.set("pool", copy.pool)
        source.set("volume", copy.volume)
        disk.set("type", "volume")
    if by_target:
        raise ValueError(f"no disk with target {', '.join(sorted(by_target))}")
    return ET.tostring(root, encoding="unicode")
