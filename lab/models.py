"""The lab's state, kept in ``<lab dir>/lab.json`` while the lab is up."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class LabError(Exception):
    """A lab problem, shown to the user without a traceback."""


class LabHost(BaseModel):
    """One lab host: a libvirtd in its own mount (and optionally network) namespace."""

    model_config = ConfigDict(extra="forbid")

    name: str
    index: int
    dir: Path  # /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt live under it
    uri: str  # libvirt URI: qemu+unix:///system?socket=…
    migration_uri: str  # where QEMU migration streams to this host go: tcp://<address>
    host_uuid: str
    migration_ports: tuple[int, int]
    netns: str | None = None  # network namespace name, when the lab has its own network
    address: str | None = None  # this host's address inside its namespace
    link: str | None = None  # the host's veth end on the lab bridge (down = link cut)
    pid: int | None = None  # libvirtd
    # With TLS: libvirtd also listens on 127.0.0.1:tls_port, presenting tls_pki/servercert.pem
    # and requiring client certificates signed by tls_pki/cacert.pem.
    tls_port: int | None = None
    tls_pki: Path | None = None

    @property
    def tls_uri(self) -> str | None:
        """``qemu+tls://`` URI of this host (add ``?pkipath=DIR`` with the client's files)."""
        return f"qemu+tls://127.0.0.1:{self.tls_port}/system" if self.tls_port else None

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"


class LabState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # short, unique per lab directory: names of namespaces and links derive from it
    dir: Path
    cache_dir: Path  # QEMU capabilities and guest images, kept across runs
    hosts: list[LabHost]
    vcpus: int
    memory_mib: int
    network: bool = False
    bridge: str | None = None
    supervisor_pid: int | None = None
    started_at: datetime | None = None
