"""The inventory, in PostgreSQL, one module per feature: ``clusters`` (clusters, and the rule a
host joins one by), ``hosts`` (register, load, state transitions, maintenance), ``vms`` (VMs and
the capacity reservations that place them), ``migration`` (moves and the clear-host plan),
``storage`` (pools, volumes, which hosts see a pool), ``disks`` (the disks of VMs and where
their storage lets them go), ``ordering`` (the claims of the resource lines), ``reconcile``
(what the safety net reads) and ``checks`` (the client's advisory checks of requests). Every
write is one transaction; every writer of a host's load locks that host's row first (see
``vms.reserve_capacity``). Import the functions from here; ``ordering`` and ``db``
(connections, schema upgrades) are used as modules.
"""

from taskomatic.inventory import db, ordering
from taskomatic.inventory.clusters import (
    change_cluster,
    create_cluster,
    delete_cluster,
    get_cluster,
    list_clusters,
)
from taskomatic.inventory.db import Database, get_database
from taskomatic.inventory.disks import (
    move_storage,
    plan_disks,
    record_vm_disks,
    release_vm_volumes,
    switch_vm_disks,
    unrecord_vm,
    vm_disks,
)
from taskomatic.inventory.hosts import (
    add_host,
    begin_maintenance,
    get_host,
    list_hosts,
    set_host_state,
)
from taskomatic.inventory.migration import plan_moves, record_move, vms_with_origin
from taskomatic.inventory.storage import (
    check_new_pool,
    check_new_volume,
    check_pool_unused,
    check_volume_unused,
    get_pool,
    get_volume,
    list_pools,
    list_volumes,
    pool_peers,
    pools_to_share,
    record_pool,
    record_pool_host,
    record_volume,
    release_pool,
    remove_pool,
    remove_volume,
    require_pool,
    require_volume,
    reserve_pool,
    set_pool_autostart,
)
from taskomatic.inventory.vms import (
    check_new_vm,
    get_vm,
    list_vms,
    record_vm,
    record_vm_in,
    release_capacity,
    remove_vm,
    remove_vm_in,
    reserve_capacity,
    set_vm_state,
    set_vm_state_in,
)

__all__ = [
    "Database",
    "add_host",
    "begin_maintenance",
    "change_cluster",
    "check_new_pool",
    "check_new_vm",
    "check_new_volume",
    "check_pool_unused",
    "check_volume_unused",
    "create_cluster",
    "db",
    "delete_cluster",
    "get_cluster",
    "get_database",
    "get_host",
    "get_pool",
    "get_vm",
    "get_volume",
    "list_clusters",
    "list_hosts",
    "list_pools",
    "list_vms",
    "list_volumes",
    "move_storage",
    "ordering",
    "plan_disks",
    "plan_moves",
    "pool_peers",
    "pools_to_share",
    "record_move",
    "record_pool",
    "record_pool_host",
    "record_vm",
    "record_vm_disks",
    "record_vm_in",
    "record_volume",
    "release_capacity",
    "release_pool",
    "release_vm_volumes",
    "remove_pool",
    "remove_vm",
    "remove_vm_in",
    "remove_volume",
    "require_pool",
    "require_volume",
    "reserve_capacity",
    "reserve_pool",
    "set_host_state",
    "set_pool_autostart",
    "set_vm_state",
    "set_vm_state_in",
    "switch_vm_disks",
    "unrecord_vm",
    "vm_disks",
    "vms_with_origin",
]
