"""Lab host URIs: each host's libvirt daemon listens on a socket of its own.

Where migrations to a lab host must go (its ``migration_uri``, e.g. ``tcp://10.77.0.12``) is
registered with the host in the inventory (``HostSpec.migration_uri``).
"""

from __future__ import annotations

from urllib.parse import quote


def lab_host_uri(socket_path: str) -> str:
    """``qemu+unix:///system?socket=<path>``."""
    return f"qemu+unix:///system?socket={quote(socket_path, safe='/._-')}"
