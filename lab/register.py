"""Lab hosts in the inventory: registered by ``lab up``, taken out of service by ``lab down``.

A lab host starts empty, so (re-)registering one forgets the VM and reservation rows a previous
run left on it; a same-named lab host of another lab directory is re-pointed to this one. Their
state changes are the host transitions ``activate`` and ``mark_down`` (``taskomatic.states``).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import libvirt

from lab.models import LabError, LabHost
from taskomatic import inventory
from taskomatic.inventory.db import Database, ensure_database, upgrade
from taskomatic.models import HostSpec
from taskomatic.states import HostTransition

_LAB_URI = "qemu+unix:///system?socket=%"


def register_hosts(database_url: str, hosts: list[LabHost], vcpus: int, memory_mib: int
                   ) -> list[str]:
    """Add (or refresh) the hosts, empty, then put them in service; returns notes on what
    changed."""
    ensure_database(database_url)
    upgrade(database_url)
    db = Database(database_url, max_connections=1)
    notes: list[str] = []
    try:
        with db.transaction() as cur:
            names = [h.name for h in hosts]
            cur.execute("SELECT id, name FROM hosts WHERE name = ANY(%s) AND uri LIKE %s"
                        " ORDER BY id FOR UPDATE", (names, _LAB_URI))
            rows = cur.fetchall()
            ids = [r["id"] for r in rows]
            cur.execute("DELETE FROM reservations WHERE host_id = ANY(%s)", (ids,))
            cur.execute("DELETE FROM vms WHERE host_id = ANY(%s)", (ids,))
            if cur.rowcount:
                notes.append(f"forgot {cur.rowcount} VM rows of a previous lab")
            for host in hosts:
                cur.execute("UPDATE hosts SET uri = %s, migration_uri = %s, vcpus = %s,"
                            " memory_mib = %s, updated_at = now()"
                            " WHERE name = %s AND uri LIKE %s",
                            (host.uri, host.migration_uri, vcpus, memory_mib, host.name,
                             _LAB_URI))
        for host in hosts:
            spec = HostSpec(name=host.name, uri=host.uri, vcpus=vcpus, memory_mib=memory_mib,
                            migration_uri=host.migration_uri)
            try:
                _record, created = inventory.add_host(db, spec)
            except Exception as err:  # a non-lab host of that name: say so
                raise LabError(f"cannot register {host.name} in the inventory: {err}") from None
            if created:
                notes.append(f"registered {host.name}")
            inventory.set_host_state(db, host.name, HostTransition.ACTIVATE)
    finally:
        db.close()
    return notes


def empty_host(db: Database, conn: libvirt.virConnect, host: str) -> None:
    """Destroy and undefine every domain of ``conn`` (the libvirtd of lab host ``host``), then
    forget the inventory's VM rows and reservations on ``host`` (between tests or fault runs).
    Errors: ``libvirt.libvirtError`` if the daemon cannot list its domains.

    The domains go in parallel (a destroy waits until libvirtd has seen its QEMU process go)."""
    def gone(dom: libvirt.virDomain) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # gone meanwhile
            if dom.isActive():
                dom.destroy()
            dom.undefine()

    domains = conn.listAllDomains()
    if domains:
        with ThreadPoolExecutor(max_workers=min(16, len(domains))) as pool:
            list(pool.map(gone, domains))
    for vm in inventory.list_vms(db, host):
        inventory.remove_vm(db, vm.name)
    with db.transaction() as cur:
        cur.execute("DELETE FROM reservations r USING hosts h"
                    " WHERE r.host_id = h.id AND h.name = %s", (host,))


def retire_hosts(database_url: str, names: list[str]) -> int:
    """Take the lab hosts out of service, then forget their (now gone) VMs; returns VM rows."""
    db = Database(database_url, max_connections=1)
    try:
        with db.transaction() as cur:
            cur.execute("SELECT name FROM hosts WHERE name = ANY(%s) AND uri LIKE %s"
                        " ORDER BY id", (names, _LAB_URI))
            lab_names = [r["name"] for r in cur.fetchall()]
        for name in lab_names:  # from here on, placement never picks them
            inventory.set_host_state(db, name, HostTransition.MARK_DOWN)
        with db.transaction() as cur:
            cur.execute("SELECT id FROM hosts WHERE name = ANY(%s) ORDER BY id FOR UPDATE",
                        (lab_names,))
            ids = [r["id"] for r in cur.fetchall()]
            cur.execute("DELETE FROM reservations WHERE host_id = ANY(%s)", (ids,))
            cur.execute("DELETE FROM vms WHERE host_id = ANY(%s)", (ids,))
            return int(cur.rowcount)
    finally:
        db.close()
