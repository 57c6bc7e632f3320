"""Helpers shared by the storage tests: pools and volumes as libvirt sees them."""

from __future__ import annotations

from conftest import Lab
from taskomatic.models import HostSpec

ROOT = "/var/lib/taskomatic/pools"  # the default pool root; test-driver pools never touch disk


def pool_path(lab: Lab, label: str) -> str:
    return f"{ROOT}/{lab.prefix}-{label}"


def pool_name(lab: Lab, label: str) -> str:
    return f"p-{lab.prefix}-{label}"


def libvirt_pools(lab: Lab, host: HostSpec) -> dict[str, tuple[bool, bool]]:
    """name → (active, autostart), as libvirt sees it on that host."""
    conn = lab.hv.connection(host.uri)
    return {p.name(): (bool(p.isActive()), bool(p.autostart()))
            for p in conn.listAllStoragePools(0)}


def libvirt_volumes(lab: Lab, host: HostSpec, pool: str) -> list[str]:
    p = lab.hv.connection(host.uri).storagePoolLookupByName(pool)
    return sorted(v.name() for v in p.listAllVolumes(0)) if p.isActive() else []
