"""Throughput benchmark: taskomatic's VM-lifecycle tasks against a bare Temporal baseline.

``python -m bench`` (``make bench``) starts one Temporal dev server, one fresh PostgreSQL
database and one in-process worker, then runs N VMs through CreateVm → StopVm → DestroyVm and the
same number of bare workflows with matching no-op activity counts, and reports both side by side.
"""
