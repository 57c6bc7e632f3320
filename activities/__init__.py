"""Activities: each one hypervisor or database action, idempotent, with typed errors.

Also the bottom layer's I/O helpers: the inventory (``activities.inventory``, PostgreSQL) and
hypervisor connections (``activities.hypervisor``, libvirt).
"""
