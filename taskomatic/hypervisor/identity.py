"""Which hypervisor a URI reaches: the identity a host is registered under.

A libvirt daemon can be reached under many URIs (a socket path spelled with ``/./`` or ``//``, a
symlinked directory, another transport), so a host's identity is the hypervisor's own: the host
UUID of its capabilities (``/capabilities/host/uuid``; libvirtd's ``host_uuid`` setting, else
the machine's SMBIOS UUID).

The test driver reports no host UUID at all (measured: ``test:///default`` and every
``test:///path/host.xml`` host leave ``<uuid>`` out), and each of its hosts is the host
description file it reads; its identity is therefore ``test:`` plus the real path of that file
(symlinks and ``.``/``..`` resolved), or ``test:///default`` for the shared default host.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from urllib.parse import unquote, urlsplit

import libvirt

from taskomatic.hypervisor.connections import Hypervisors
from taskomatic.models import HostFacts

TEST_DEFAULT = "test:///default"


def host_identity(conn: libvirt.virConnect, uri: str) -> str | None:
    """The identity of the hypervisor ``conn`` (opened on ``uri``) is: its host UUID (lower
    case), else for the test driver its host file (see the module), else None (a driver that
    says nothing of itself). Raises ``libvirt.libvirtError`` if the capabilities cannot be read.
    """
    if uri.startswith("test:"):
        return driver_file_identity(uri)
    found = ET.fromstring(conn.getCapabilities()).findtext("host/uuid")
    return found.strip().lower() if found and found.strip() else None


def driver_file_identity(uri: str) -> str:
    """The identity of the test-driver host ``uri`` (``test:///abs/host.xml``): ``test:`` and
    the real path of its file; ``test:///default`` for the default host."""
    path = unquote(urlsplit(uri).path)
    if path in ("/default", ""):
        return TEST_DEFAULT
    return f"test:{os.path.realpath(path)}"


def host_facts(conn: libvirt.virConnect, uri: str) -> HostFacts:
    """What the hypervisor ``conn`` (opened on ``uri``) is: its identity (``host_identity``),
    driver (``getType()``, lower case: ``test``, ``qemu``), CPU model (the capabilities'
    ``host/cpu/model``, else virNodeInfo's model, e.g. ``x86_64``), CPUs and memory in MiB
    (``getInfo()``: the Python binding gives MiB). Raises ``libvirt.libvirtError``."""
    info = conn.getInfo()
    model = ET.fromstring(conn.getCapabilities()).findtext("host/cpu/model")
    return HostFacts(identity=host_identity(conn, uri), hypervisor_type=conn.getType().lower(),
                     cpu_model=(model or str(info[0])).strip() or None, cpus=int(info[2]),
                     memory_mib=int(info[1]))


def probe_facts(hypervisors: Hypervisors, uri: str, host: str) -> HostFacts:
    """Connect to ``uri`` and read ``host_facts``. Raises the typed error of
    ``Hypervisors.call`` (``HypervisorUnavailable``, …) if it does not answer."""
    with hypervisors.call("read the identity of", uri, host) as conn:
        return host_facts(conn, uri)
