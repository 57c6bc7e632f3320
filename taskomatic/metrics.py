"""The worker's Prometheus metrics (``prometheus-client``; served on ``/metrics`` by
``taskomatic.health``). Names follow Prometheus conventions: ``taskomatic_`` prefix, seconds and
bytes as base units, ``_total`` for counters. The Temporal SDK's own metrics (its runtime
telemetry: task-queue polls, schedule-to-start latency, slots) are served separately when
``TASKOMATIC_TEMPORAL_METRICS_ADDRESS`` is set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_STARTED = Counter("taskomatic_tasks_started_total", "Tasks started by this worker",
                        ["kind"])
TASKS_ENDED = Counter("taskomatic_tasks_ended_total",
                      "Tasks ended on this worker, by outcome (complete, error, cancelled)",
                      ["kind", "outcome"])
STEP_SECONDS = Histogram("taskomatic_step_duration_seconds",
                         "Duration of activity attempts (a task's steps), by activity and outcome",
                         ["activity", "outcome"],
                         buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
PLACEMENT_SECONDS = Histogram("taskomatic_placement_duration_seconds",
                              "Time to choose and reserve a host (the placement transaction)",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
MIGRATIONS_IN_FLIGHT = Gauge("taskomatic_migrations_in_flight",
                             "Live migrations this worker is running now")
MIGRATION_BYTES = Counter("taskomatic_migration_bytes_total",
                          "Bytes moved by live migrations this worker ran (libvirt's "
                          "job statistics: data processed)")
HOSTS = Gauge("taskomatic_hosts", "Hosts in the inventory by state (as the host monitor last "
              "read them)", ["state"])
HOST_CONTACT_CHANGES = Counter("taskomatic_host_contact_changes_total",
                               "Hosts the monitor marked non_responsive (lost) or up (regained)",
                               ["change"])
RECONCILE_FINDINGS = Counter("taskomatic_reconcile_findings_total",
                             "What the reconciliation found, by kind and whether it repaired it",
                             ["kind", "repaired"])
EVENTS = Counter("taskomatic_libvirt_events_total",
                 "libvirt lifecycle events received, by kind and what became of them "
                 "(recorded, unchanged, skipped)", ["kind", "result"])
EVENT_LAG_SECONDS = Histogram("taskomatic_event_to_inventory_seconds",
                              "From libvirt's delivery of a lifecycle event to its inventory "
                              "write committed",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
POOL_WAIT_SECONDS = Histogram("taskomatic_inventory_pool_wait_seconds",
                              "Time an inventory step waited for a database connection",
                              buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
