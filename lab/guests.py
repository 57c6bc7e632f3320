"""Guests for lab hosts: tiny TCG VMs.

- The default guest is what ``CreateVm`` defines (``taskomatic.hypervisor.domain_xml``):
  disk-less, SeaBIOS only (it finds no bootable device and idles), 64 MiB. It ignores ACPI
  shutdown.
- The Linux guest boots a Debian cloud kernel with a busybox initramfs whose init prints
  ``tick N uptime S`` to the serial console every second; the console is a file under the lab
  cache that every host appends to, so a test reads one counter across a migration. Kernel and
  initramfs come only from Debian packages (``apt-get download`` + ``dpkg-deb``), built once and
  cached under ``<lab cache>/guests``.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libvirt

from lab.initramfs import TICK_PATTERN, write_initramfs
from lab.models import LabError, LabHost
from lab.system import apt_get, run
from taskomatic.hypervisor.domain_xml import build_domain_xml
from taskomatic.models import DiskSpec, DomainSpec

SEABIOS_MEMORY_MIB = 64
LINUX_MEMORY_MIB = 96
TB_CACHE_MIB = 16  # QEMU's TCG translation cache; its default (1 GiB) is far more than needed
KERNEL_META = "linux-image-cloud-amd64"
CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1"


def seabios_spec(host: LabHost, name: str, memory_mib: int = SEABIOS_MEMORY_MIB, vcpus: int = 1
                 ) -> DomainSpec:
    """The default lab guest, as ``CreateVm`` would define it on ``host``."""
    return DomainSpec(host=host.name, uri=host.uri, name=name, uuid=str(uuid.uuid4()),
                      vcpus=vcpus, memory_mib=memory_mib)


@dataclass(frozen=True)
class LinuxImage:
    kernel: Path
    initrd: Path


def linux_image(cache_dir: Path) -> LinuxImage:
    """Kernel and initramfs of the Linux guest, built on first use (one build at a time)."""
    guests = cache_dir.resolve() / "guests"
    guests.mkdir(parents=True, exist_ok=True)
    image = LinuxImage(guests / "vmlinuz", guests / "initramfs.gz")
    if image.kernel.exists() and image.initrd.exists():
        return image
    with (guests / "build.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (image.kernel.exists() and image.initrd.exists()):
            _build(image)
    return image


def _build(image: LinuxImage) -> None:
    with tempfile.TemporaryDirectory(dir=image.kernel.parent) as tmp:
        work = Path(tmp)
        kernel_pkg = _kernel_package()
        apt_get("download", "-o", "APT::Sandbox::User=root", kernel_pkg, "busybox-static",
                cwd=work)
        root = work / "root"
        root.mkdir()
        for deb in work.glob("*.deb"):
            # Only what is needed: the kernel's /boot and busybox (the modules are large).
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                   stdout=subprocess.PIPE)
            # tar fails on the member a package lacks: what was found is checked below.
            subprocess.run(["tar", "-x", "-C", str(root), "--wildcards", "./boot/vmlinuz*",
                            "./bin/busybox"], stdin=tar.stdout, capture_output=True)
            if tar.wait() != 0:
                raise LabError(f"cannot unpack {deb.name}")
        kernels = sorted((root / "boot").glob("vmlinuz*"))
        busybox = root / "bin" / "busybox"
        if not kernels or not busybox.exists():
            raise LabError(f"{kernel_pkg} / busybox-static did not contain a kernel / busybox")
        write_initramfs(image.initrd, busybox)
        shutil.copyfile(kernels[-1], image.kernel.with_suffix(".tmp"))
        image.kernel.with_suffix(".tmp").replace(image.kernel)


def _kernel_package() -> str:
    """The kernel package the cloud-kernel meta-package points to (e.g. linux-image-6.1…)."""
    for attempt in range(2):
        done = run("apt-cache", "depends", KERNEL_META, check=False)
        found = re.search(r"Depends: (linux-image-\S+)", done.stdout)
        if found:
            return found.group(1)
        if attempt == 0:
            run("apt-get", "update")
    raise LabError(f"apt knows no {KERNEL_META}: is a Debian archive in the apt sources?")


def linux_domain_xml(name: str, image: LinuxImage, serial_log: Path,
                     memory_mib: int = LINUX_MEMORY_MIB, vcpus: int = 1,
                     domain_uuid: str | None = None, disks: Sequence[DiskSpec] = ()) -> str:
    """The Linux guest's domain XML: the default guest (with ``disks``, pool volumes) plus a
    direct kernel boot, a small TCG cache and its serial console appended to ``serial_log``."""
    spec = DomainSpec(host="-", uri="qemu:///system", name=name,
                      uuid=domain_uuid or str(uuid.uuid4()), vcpus=vcpus, memory_mib=memory_mib,
                      disks=list(disks))
    root = ET.fromstring(build_domain_xml(spec))
    os_el = root.find("os")
    features = root.find("features")
    devices = root.find("devices")
    assert os_el is not None and features is not None and devices is not None
    for tag, text in (("kernel", str(image.kernel)), ("initrd", str(image.initrd)),
                      ("cmdline", CMDLINE)):
        ET.SubElement(os_el, tag).text = text
    ET.SubElement(ET.SubElement(features, "tcg"), "tb-cache", unit="MiB").text = str(TB_CACHE_MIB)
    serial = devices.find("serial")
    assert serial is not None
    serial.set("type", "file")
    ET.SubElement(serial, "source", path=str(serial_log), append="on")
    return ET.tostring(root, encoding="unicode")


@dataclass
class LinuxGuest:
    """A running Linux guest and its serial console (a file all hosts append to)."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    serial_log: Path

    def ticks(self) -> list[tuple[int, float]]:
        """Every ``(tick, uptime seconds)`` the guest printed so far, in order."""
        try:
            text = self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [(int(n), float(up)) for n, up in re.findall(TICK_PATTERN, text)]

    def last_tick(self) -> tuple[int, float] | None:
        ticks = self.ticks()
        return ticks[-1] if ticks else None

    def wait_for_tick(self, beyond: int = 0, timeout: float = 120.0) -> tuple[int, float]:
        """Wait until the guest prints a tick numbered above ``beyond``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last_tick()
            if last is not None and last[0] > beyond:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest {self.name} printed no tick above {beyond} within "
                                   f"{timeout:.0f} s (last: {last}); see {self.serial_log}")
            time.sleep(0.2)


def start_linux_guest(conn: libvirt.virConnect, name: str, cache_dir: Path,
                      memory_mib: int = LINUX_MEMORY_MIB, vcpus: int = 1,
                      disks: Sequence[DiskSpec] = ()) -> LinuxGuest:
    """Define and start a Linux guest (persistent) on the host of ``conn``, with ``disks``
    (volumes of pools active there) as virtio disks."""
    image = linux_image(cache_dir)
    consoles = cache_dir.resolve() / "consoles"
    consoles.mkdir(parents=True, exist_ok=True)
    guest = LinuxGuest(name=name, uuid=str(uuid.uuid4()), memory_mib=memory_mib, vcpus=vcpus,
                       serial_log=consoles / f"{name}-{uuid.uuid4().hex[:8]}.log")
    xml = linux_domain_xml(name, image, guest.serial_log, memory_mib, vcpus, guest.uuid, disks)
    dom = conn.defineXML(xml)
    try:
        dom.create()
    except libvirt.libvirtError:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
        raise
    return guest
