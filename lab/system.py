"""What the lab needs from the machine: root, Debian packages, the QEMU user, namespaces.

Packages are installed when missing (``apt-get``, never ``libvirt-daemon-system``: it pulls in
systemd); libvirt 9.0 resolves its default QEMU user and group (``libvirt-qemu``, ``kvm``)
before it reads qemu.conf, so they are created when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lab.models import LabError, LabState
from taskomatic.logs import get_logger

log = get_logger(component="lab")

PACKAGES = ["libvirt-daemon", "libvirt-daemon-driver-qemu", "qemu-system-x86",
            "libvirt-clients", "qemu-utils", "iproute2"]
BINARIES = {"libvirtd": "libvirt-daemon", "qemu-system-x86_64": "qemu-system-x86",
            "unshare": "util-linux", "nsenter": "util-linux", "ip": "iproute2",
            "dpkg-deb": "dpkg", "apt-get": "apt"}
GROUPS = ["kvm", "libvirt-qemu"]
USER = "libvirt-qemu"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()}")
    return done


def apt_get(*args: str, cwd: Path | None = None) -> None:
    """``apt-get ARGS``, once more after ``apt-get update`` if it fails (stale or missing package
    lists are the usual cause); a second failure is a LabError with apt's message."""
    argv = ["apt-get", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        if attempt == 0:
            run("apt-get", "update")
    raise LabError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        done = run("dpkg-query", "-W", "-f=${Status}", pkg, check=False)
        if "ok installed" not in done.stdout:
            missing.append(pkg)
    return missing


def ensure_system() -> list[str]:
    """Make the machine ready for lab hosts; returns what was done (empty: nothing needed)."""
    if os.geteuid() != 0:
        raise LabError("the lab runs root libvirtd daemons: run it as root")
    done: list[str] = []
    missing = missing_packages() if shutil.which("dpkg-query") else []
    if missing:
        log.info("installing packages", packages=missing)
        apt_get("install", "-y", "--no-install-recommends", *missing)
        done.append(f"installed {' '.join(missing)}")
    for group in GROUPS:
        if run("getent", "group", group, check=False).returncode != 0:
            run("groupadd", "--system", group)
            done.append(f"created group {group}")
    if run("getent", "passwd", USER, check=False).returncode != 0:
        run("useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/libvirt",
            "--shell", "/usr/sbin/nologin", "--gid", "kvm", USER)
        done.append(f"created user {USER}")
    absent = [f"{b} ({pkg})" for b, pkg in BINARIES.items() if shutil.which(b) is None]
    if absent:
        raise LabError(f"missing programs: {', '.join(absent)}")
    return done


# --- network namespaces: one per host, their veths on one bridge per lab ----------------------


def netns_exists(name: str) -> bool:
    return name in run("ip", "netns", "list").stdout.split()


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", name, check=False).returncode == 0


def create_bridge(name: str) -> None:
    if not link_exists(name):
        run("ip", "link", "add", name, "type", "bridge")
    run("ip", "link", "set", name, "up")


def create_host_netns(netns: str, link: str, bridge: str, address: str) -> None:
    """A namespace whose ``eth0`` (address ``address``/24) is a veth to ``link`` on ``bridge``."""
    if not netns_exists(netns):
        run("ip", "netns", "add", netns)
    if not link_exists(link):
        peer = f"{link}p"
        run("ip", "link", "add", link, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", netns)
        run("ip", "-n", netns, "link", "set", peer, "name", "eth0")
        run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "link", "set", link, "master", bridge, "up")
    run("ip", "-n", netns, "link", "set", "eth0", "up")
    run("ip", "-n", netns, "link", "set", "lo", "up")


def delete_network(state: LabState) -> None:
    """The lab's veth pairs, namespaces and bridge, whichever exist."""
    for host in state.hosts:
        if host.link:  # both ends of the veth pair go
            delete_link(host.link)
        if host.netns:
            delete_netns(host.netns)
    if state.bridge:
        delete_link(state.bridge)


def set_link(link: str, up: bool) -> None:
    run("ip", "link", "set", link, "up" if up else "down")


def delete_netns(netns: str) -> None:
    """Deleting a namespace deletes its veth pair too."""
    if netns_exists(netns):
        run("ip", "netns", "delete", netns)


def delete_link(name: str) -> None:
    """Delete a link; one that vanished meanwhile (with its namespace) is fine too."""
    if link_exists(name):
        done = run("ip", "link", "delete", name, check=False)
        if done.returncode != 0 and link_exists(name):
            raise LabError(f"cannot delete link {name}: {done.stderr.strip()}")


def main() -> int:
    """``python -m lab.system`` (``make lab-system``): prepare the machine, say what was done."""
    try:
        done = ensure_system()
    except LabError as err:
        print(f"lab: {err}", file=sys.stderr)
        return 1
    print("lab: " + ("; ".join(done) if done else "the machine is ready (nothing to install)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
