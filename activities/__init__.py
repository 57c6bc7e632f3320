"""Activities: thin Temporal activity classes, each method one hypervisor or database action,
idempotent (Temporal runs activities at least once), with libvirt and database errors leaving as
typed, classified errors. The work itself is in the bottom layer: ``taskomatic.inventory`` (SQL)
and ``taskomatic.hypervisor`` (libvirt). One module per feature, the same stems as ``workflows``.
"""

from activities.disks import DiskActivities
from activities.hosts import HostActivities
from activities.migration import MigrationActivities
from activities.ordering import OrderingActivities
from activities.reconcile import HostReconcileActivities, QueueReconcileActivities
from activities.storage import StorageActivities, StorageInventoryActivities
from activities.vms import DomainActivities, InventoryActivities

__all__ = [
    "DiskActivities", "DomainActivities", "HostActivities", "HostReconcileActivities",
    "InventoryActivities", "MigrationActivities", "OrderingActivities",
    "QueueReconcileActivities", "StorageActivities", "StorageInventoryActivities",
]
