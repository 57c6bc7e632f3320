"""Lab hosts in the inventory: registered by ``lab up``, taken out of service by ``lab down``.

A lab host starts empty, so (re-)registering one forgets the VM and reservation rows a previous
run left on it; a same-named lab host of another lab directory is re-pointed to this one.
"""

from __future__ import annotations

from lab.models import LabError, LabHost
from taskomatic import inventory
from taskomatic.inventory.db import Database, ensure_database, upgrade
from taskomatic.models import HostSpec

_LAB_URI = "qemu+unix:///system?socket=%"


def register_hosts(database_url: str, hosts: list[LabHost], vcpus: int, memory_mib: int
                   ) -> list[str]:
    """Add (or refresh) the hosts, in service and empty; returns notes on what changed."""
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
                            " memory_mib = %s, state = 'up', updated_at = now()"
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
    finally:
        db.close()
    return notes


def retire_hosts(database_url: str, names: list[str]) -> int:
    """Take the lab hosts out of service and forget their (now gone) VMs; returns VM rows."""
    db = Database(database_url, max_connections=1)
    try:
        with db.transaction() as cur:
            cur.execute("SELECT id FROM hosts WHERE name = ANY(%s) AND uri LIKE %s"
                        " ORDER BY id FOR UPDATE", (names, _LAB_URI))
            ids = [r["id"] for r in cur.fetchall()]
            cur.execute("DELETE FROM reservations WHERE host_id = ANY(%s)", (ids,))
            cur.execute("DELETE FROM vms WHERE host_id = ANY(%s)", (ids,))
            vms = int(cur.rowcount)
            cur.execute("UPDATE hosts SET state = 'down', updated_at = now()"
                        " WHERE id = ANY(%s)", (ids,))
        return vms
    finally:
        db.close()
