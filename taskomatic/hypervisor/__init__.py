"""The libvirt layer: the worker's connections (one per URI), libvirt errors made into typed
ones, lookups of domains, pools and volumes, moving domains between hosts (``Migrator``) and
finding where they are, and the XML of domains, pools and volumes (built with ElementTree, never
by formatting)."""

from taskomatic.hypervisor.connections import Hypervisors, lookup, power_state
from taskomatic.hypervisor.migration import Migrator, can_migrate_live
from taskomatic.hypervisor.storage import lookup_pool, lookup_volume
from taskomatic.hypervisor.whereabouts import domain_states, list_domains, locate

__all__ = ["Hypervisors", "Migrator", "can_migrate_live", "domain_states", "list_domains",
           "locate", "lookup", "lookup_pool", "lookup_volume", "power_state"]
