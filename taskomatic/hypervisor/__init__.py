"""The libvirt layer: the worker's connections (one per URI), libvirt errors made into typed
ones, and the XML of domains, pools and volumes (built with ElementTree, never by formatting)."""

from taskomatic.hypervisor.connections import Hypervisors, lookup, power_state

__all__ = ["Hypervisors", "lookup", "power_state"]
