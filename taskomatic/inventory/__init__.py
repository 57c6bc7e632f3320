"""The inventory: hosts, VMs, capacity reservations, storage and the resource lines, in
PostgreSQL. Every function is one transaction; every writer of a host's load locks that host's row
first (see ``vms.reserve_capacity``). Import the functions from here; ``ordering`` (the claims of
the resource lines) and ``db`` (connections, schema upgrades) are used as modules.
"""

from taskomatic.inventory import db, ordering
from taskomatic.inventory.db import Database, get_database
from taskomatic.inventory.hosts import (
    begin_maintenance,
    change_host_state,
    plan_moves,
    record_move,
    vms_with_origin,
)
from taskomatic.inventory.storage import (
    check_new_pool,
    check_new_volume,
    check_pool_unused,
    check_volume_unused,
    get_pool,
    get_volume,
    list_pools,
    list_volumes,
    plan_disks,
    record_pool,
    record_vm_disks,
    record_volume,
    release_pool,
    release_vm_volumes,
    remove_pool,
    remove_volume,
    require_pool,
    require_volume,
    reserve_pool,
    set_pool_autostart,
    unrecord_vm,
    vm_disks,
)
from taskomatic.inventory.vms import (
    add_host,
    check_new_vm,
    get_host,
    get_vm,
    list_hosts,
    list_vms,
    record_vm,
    release_capacity,
    remove_vm,
    reserve_capacity,
    set_host_state,
    set_vm_state,
)

__all__ = [
    "Database", "add_host", "begin_maintenance", "change_host_state", "check_new_pool",
    "check_new_vm", "check_new_volume", "check_pool_unused", "check_volume_unused", "db",
    "get_database", "get_host", "get_pool", "get_vm", "get_volume", "list_hosts", "list_pools",
    "list_vms", "list_volumes", "ordering", "plan_disks", "plan_moves", "record_move",
    "record_pool", "record_vm", "record_vm_disks", "record_volume", "release_capacity",
    "release_pool", "release_vm_volumes", "remove_pool", "remove_vm", "remove_volume",
    "require_pool", "require_volume", "reserve_capacity", "reserve_pool", "set_host_state",
    "set_pool_autostart", "set_vm_state", "unrecord_vm", "vm_disks", "vms_with_origin",
]
