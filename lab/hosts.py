"""Lab hosts on disk: their directories, libvirtd.conf and qemu.conf, and the daemon command.

A root libvirtd always uses /etc/libvirt, /run/libvirt and /var/{lib,cache,log}/libvirt, so each
host's daemon runs in its own mount namespace with those paths bind-mounted to directories under
``<lab>/hosts/<name>/``. The QEMU capabilities cache (``<lab>/cache``) is shared by all hosts and
kept across runs: probing QEMU takes seconds, reading the cache does not.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

from lab.models import LabError, LabHost
from lab.uris import lab_host_uri

# (directory under the host dir, path the daemon sees)
BIND_MOUNTS = [("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
               ("log", "/var/log/libvirt")]
CACHE_MOUNT = "/var/cache/libvirt"
MIGRATION_PORT_BASE = 49152
PORTS_PER_HOST = 64
NETWORK_PREFIX = "10.77.0"


# Files a TLS-listening host's libvirtd reads from its ``tls_pki`` directory.
TLS_SERVER_FILES = ("cacert.pem", "servercert.pem", "serverkey.pem")


def plan_hosts(lab_dir: Path, lab_id: str, count: int, network: bool,
               tls_pki: Path | None = None) -> list[LabHost]:
    if tls_pki is not None:
        if network:
            raise LabError("TLS listening is for hosts on the machine's own network: "
                           "leave out --network")
        missing = [f for f in TLS_SERVER_FILES if not (tls_pki / f).is_file()]
        if missing:
            raise LabError(f"the TLS directory {tls_pki} lacks {', '.join(missing)}")
    hosts = []
    for index in range(1, count + 1):
        name = f"lab-{index}"
        host_dir = lab_dir / "hosts" / name
        low = MIGRATION_PORT_BASE + PORTS_PER_HOST * (index - 1)
        address = f"{NETWORK_PREFIX}.{10 + index}" if network else None
        migration_uri = f"tcp://{address or '127.0.0.1'}"
        hosts.append(LabHost(
            name=name, index=index, dir=host_dir,
            uri=lab_host_uri(str(host_dir / "run" / "libvirt-sock")),
            migration_uri=migration_uri, host_uuid=str(uuid.uuid4()),
            migration_ports=(low, low + PORTS_PER_HOST - 1),
            netns=f"tkl{lab_id}-{index}" if network else None, address=address,
            link=f"tkl{lab_id}v{index}" if network else None,
            tls_port=free_port() if tls_pki else None,
            tls_pki=tls_pki.resolve() if tls_pki else None))
    return hosts


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_host_files(host: LabHost) -> None:
    """Fresh directories and configuration for one host (a lab host starts empty)."""
    shutil.rmtree(host.dir, ignore_errors=True)
    for sub, _target in BIND_MOUNTS:
        (host.dir / sub).mkdir(parents=True)
    (host.dir / "etc" / "libvirtd.conf").write_text(_conf({
        "host_uuid": host.host_uuid,
        "auth_unix_rw": "none",
        "auth_unix_ro": "none",
        "unix_sock_rw_perms": "0700",
        "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
        **(_tls_listen(host) if host.tls_port else {}),
    }))
    low, high = host.migration_ports
    (host.dir / "etc" / "qemu.conf").write_text(_conf({
        "user": "root", "group": "root", "security_driver": "none",
        "cgroup_controllers": [], "namespaces": [], "stdio_handler": "file",
        "dynamic_ownership": 0, "migration_port_min": low, "migration_port_max": high,
        # Without these a destination advertises its host name and listens everywhere. libvirt
        # refuses 127.0.0.1 here, so callers must pass the migration URI (LabHost.migration_uri).
        **({"migration_host": host.address, "migration_address": host.address}
           if host.address else {}),
    }))


def _tls_listen(host: LabHost) -> dict[str, str | int | list[str]]:
    """libvirtd.conf lines of TLS listening (x509, client certificates required)."""
    assert host.tls_pki is not None
    cacert, cert, key = (str(host.tls_pki / f) for f in TLS_SERVER_FILES)
    return {"listen_tls": 1, "listen_tcp": 0, "listen_addr": "127.0.0.1",
            "tls_port": str(host.tls_port), "ca_file": cacert, "cert_file": cert,
            "key_file": key, "auth_tls": "none"}


def _conf(values: dict[str, str | int | list[str]]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            text = "[ " + ", ".join(f'"{v}"' for v in value) + " ]"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = f'"{value}"'
        lines.append(f"{key} = {text}\n")
    return "".join(lines)


# The daemon's start: bind the host's directories over the standard paths (inside the new mount
# namespace only), then become libvirtd. "$1" is the host dir, "$2" the shared cache.
_START = " && ".join(
    [f'mkdir -p {target} && mount --bind "$1/{sub}" {target}' for sub, target in BIND_MOUNTS]
    + [f'mkdir -p {CACHE_MOUNT} && mount --bind "$2" {CACHE_MOUNT}',
       'exec libvirtd --pid-file "$1/libvirtd.pid" $3'])


def daemon_argv(host: LabHost, cache_dir: Path) -> list[str]:
    listen = "--listen" if host.tls_port else ""  # TCP/TLS sockets, as libvirtd.conf says
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _START, "lab-host", str(host.dir), str(cache_dir), listen]
    if host.netns:
        argv = ["nsenter", f"--net=/run/netns/{host.netns}", "--", *argv]
    return argv
