"""A lab host whose libvirtd listens with TLS (x509, client certificates required), driven by
the worker over ``qemu+tls://…?pkipath=DIR`` like a remote hypervisor in production.

Certificates come from a CA made by the test (tlslab.py); the lab host is a real libvirtd
(see lab_fixtures.py), started for this module only.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from helpers import force_host_state, only_hosts_up
from lab_fixtures import CACHE_DIR
from tlslab import CertificateAuthority, Issued

from lab.control import lab_down, lab_up
from lab.models import LabHost
from starter.client import RequestError, TaskomaticClient
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest, DestroyVmRequest, HostSpec, HostState

pytestmark = pytest.mark.lab


@dataclass
class TlsLab:
    host: LabHost
    client_pki: Path  # the CA, and a client certificate it signed
    rogue_pki: Path  # another CA, and a client certificate that one signed


def _pki_dir(directory: Path, ca: CertificateAuthority, issued: Issued, role: str) -> Path:
    """A libvirt ``pkipath`` directory: cacert.pem plus ``<role>cert.pem``/``<role>key.pem``."""
    directory.mkdir()
    shutil.copy(ca.path, directory / "cacert.pem")
    shutil.copy(issued.cert, directory / f"{role}cert.pem")
    shutil.copy(issued.key, directory / f"{role}key.pem")
    return directory


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsLab]:
    top = tmp_path_factory.mktemp("tlslab")
    ca, rogue = CertificateAuthority(top, "ca"), CertificateAuthority(top, "rogue")
    server = _pki_dir(top / "server", ca, ca.issue("lab-tls.test", server=True), "server")
    client = _pki_dir(top / "client", ca, ca.issue("worker", server=False), "client")
    intruder = _pki_dir(top / "rogue", rogue, rogue.issue("intruder", server=False), "client")
    report = lab_up(top / "lab", 1, tls_pki=server, cache_dir=CACHE_DIR, tied=True)
    assert report.state is not None
    try:
        yield TlsLab(report.state.hosts[0], client, intruder)
    finally:
        lab_down(top / "lab")


async def test_tasks_drive_a_host_over_tls(tls_lab: TlsLab, client: TaskomaticClient,
                                           db: Database, hypervisors: Hypervisors) -> None:
    host = tls_lab.host
    assert host.tls_uri is not None
    uri = f"{host.tls_uri}?pkipath={tls_lab.client_pki}"
    name = f"tls-{uuid.uuid4().hex[:6]}"
    record, added = await client.add_host(HostSpec(name=name, uri=uri, vcpus=4,
                                                   memory_mib=1024))  # probed over TLS
    assert added and record.uri == uri
    vm = f"vm-{name}"
    try:
        with only_hosts_up(db, [name]):
            created = await (await client.create_vm(CreateVmRequest(
                name=vm, vcpus=1, memory_mib=64, start=True))).result()
            assert (created.host, created.state) == (name, "running")
            local = libvirt.open(host.uri)  # the same daemon, through its local socket
            try:
                assert local.lookupByName(vm).isActive()
                await (await client.destroy_vm(DestroyVmRequest(name=vm))).result()
                assert vm not in [d.name() for d in local.listAllDomains()]
            finally:
                local.close()
    finally:
        force_host_state(db, name, HostState.DOWN)
        hypervisors.forget(uri)


async def test_certificates_are_checked_both_ways(tls_lab: TlsLab,
                                                  client: TaskomaticClient) -> None:
    assert tls_lab.host.tls_uri is not None
    rogue = f"{tls_lab.host.tls_uri}?pkipath={tls_lab.rogue_pki}"
    # The client does not trust the server: its certificate comes from a CA it does not know.
    with pytest.raises(RequestError) as refused:
        await client.add_host(HostSpec(name=f"tls-{uuid.uuid4().hex[:6]}", uri=rogue, vcpus=1,
                                       memory_mib=256))
    assert refused.value.field == "uri"
    assert "Failed to verify peer's certificate" in str(refused.value)
    # Told not to check the server, the client gets through to it, and the server refuses it.
    with pytest.raises(libvirt.libvirtError) as err:
        libvirt.open(f"{rogue}&no_verify=1")
    assert "TLS" in (err.value.get_error_message() or "")
