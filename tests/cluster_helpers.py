"""Clusters and hosts made for one test: test-driver hosts added through the client (which reads
libvirt) to a cluster of the test's own."""

from __future__ import annotations

from conftest import Lab
from starter.client import TaskomaticClient
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterSpec, HostSpec


async def join(client: TaskomaticClient, lab: Lab, index: int, cluster: str | None, *,
               cpus: int = 4, physical_mib: int = 4096, **capacity: int) -> HostSpec:
    """A fresh test-driver host with ``cpus`` CPUs and ``physical_mib`` MiB, added through the
    client (which reads libvirt) to ``cluster``; it leaves service after the test."""
    name = f"h{lab.prefix}-{index}"
    spec = HostSpec(name=name, uri=write_test_host(lab.dir, name, cpus, physical_mib),
                    cluster=cluster, **capacity)
    await client.add_host(spec)
    lab.hv.connection(spec.uri)
    lab.hosts.append(spec)
    return spec


def cluster(db: Database, lab: Lab, label: str, **settings: object) -> str:
    name = f"c{lab.prefix}-{label}"
    spec = ClusterSpec.model_validate({"name": name, "hypervisor_type": "test", **settings})
    inventory.create_cluster(db, spec)
    return name
