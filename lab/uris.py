"""Lab host URIs. A lab host's libvirt URI carries its migration URI as a query parameter, so
anything that has the URI (the inventory, a worker) can find where migrations to it must go.

libvirt ignores query parameters it does not know, so the URI connects as it is.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

MIGRATION_PARAM = "migration_uri"


def lab_host_uri(socket_path: str, migration_uri: str) -> str:
    """``qemu+unix:///system?socket=<path>&migration_uri=<escaped URI>``."""
    return (f"qemu+unix:///system?socket={quote(socket_path, safe='/._-')}"
            f"&{MIGRATION_PARAM}={quote(migration_uri, safe='')}")


def migration_uri_of(host_uri: str) -> str | None:
    """The explicit migration URI (e.g. ``tcp://127.0.0.1``) a host URI carries, if any."""
    values = parse_qs(urlsplit(host_uri).query).get(MIGRATION_PARAM)
    return values[0] if values else None
