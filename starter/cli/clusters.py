"""``taskomatic cluster …``: the clusters hosts belong to (placement and migration stay inside
one).

    taskomatic cluster create NAME --hypervisor-type qemu [--cpu-model M]
        [--vcpu-overcommit 4.0] [--memory-overcommit 1.0] [--weigher spread|pack]
    taskomatic cluster list
    taskomatic cluster show NAME
    taskomatic cluster set NAME [--vcpu-overcommit X] [--memory-overcommit Y]
        [--weigher spread|pack]
    taskomatic cluster delete NAME     # only an empty cluster, never "default"

A host joins one with ``taskomatic host add NAME --uri URI --cluster NAME``.
"""

from __future__ import annotations

import argparse
from typing import Any

from starter import RequestError, validated
from starter.cli import common, render
from starter.cli.common import noun, show, verb
from taskomatic.models import ClusterChange, ClusterRecord, ClusterSpec
from taskomatic.models.clusters import DEFAULT_MEMORY_OVERCOMMIT, DEFAULT_VCPU_OVERCOMMIT


async def cluster_create(args: argparse.Namespace) -> int:
    spec = validated(ClusterSpec, name=args.name, hypervisor_type=args.hypervisor_type,
                     cpu_model=args.cpu_model, vcpu_overcommit=args.vcpu_overcommit,
                     memory_overcommit=args.memory_overcommit, weigher=args.weigher)
    cluster, created = await (await common.connect()).create_cluster(spec)
    return show(args, cluster, f"cluster [bold]{cluster.name}[/] "
                               f"{'created' if created else 'already exists'} "
                               f"({cluster.hypervisor_type}, {cluster.weigher})")


async def cluster_list(args: argparse.Namespace) -> int:
    clusters = await (await common.connect()).clusters()
    return show(args, clusters, render.clusters_table(clusters))


async def cluster_show(args: argparse.Namespace) -> int:
    cluster = _found(await (await common.connect()).cluster(args.name), args.name)
    return show(args, cluster, render.clusters_table([cluster]))


async def cluster_set(args: argparse.Namespace) -> int:
    change = validated(ClusterChange, vcpu_overcommit=args.vcpu_overcommit,
                       memory_overcommit=args.memory_overcommit, weigher=args.weigher)
    cluster = _found(await (await common.connect()).change_cluster(args.name, change), args.name)
    return show(args, cluster, render.clusters_table([cluster]))


async def cluster_delete(args: argparse.Namespace) -> int:
    cluster = _found(await (await common.connect()).delete_cluster(args.name), args.name)
    return show(args, cluster, f"cluster [bold]{cluster.name}[/] deleted")


def _found(cluster: ClusterRecord | None, name: str) -> ClusterRecord:
    """``cluster``, or the refusal of a cluster name the inventory does not have."""
    if cluster is None:
        raise RequestError("name", f"no cluster named {name!r}")
    return cluster


def add_commands(nouns: Any) -> None:
    """Add the ``cluster`` noun and its verbs."""
    cluster = noun(nouns, "cluster", "clusters of hosts (placement and migration stay inside)")
    sp = verb(cluster, "create", cluster_create, "create a cluster", read=True)
    sp.add_argument("name")
    sp.add_argument("--hypervisor-type", required=True,
                    help="libvirt driver of its hosts, as getType() says it: test, qemu")
    sp.add_argument("--cpu-model", help="CPU baseline: hosts must report this CPU model")
    sp.add_argument("--vcpu-overcommit", type=float, default=DEFAULT_VCPU_OVERCOMMIT,
                    help="vCPUs placed per physical CPU (default %(default)s)")
    sp.add_argument("--memory-overcommit", type=float, default=DEFAULT_MEMORY_OVERCOMMIT,
                    help="MiB placed per MiB of host memory (default %(default)s)")
    sp.add_argument("--weigher", choices=("spread", "pack"), default="spread",
                    help="spread: least loaded host first; pack: most loaded first")
    verb(cluster, "list", cluster_list, "clusters with their hosts and load", read=True)
    verb(cluster, "show", cluster_show, "one cluster", read=True).add_argument("name")
    sp = verb(cluster, "set", cluster_set,
              "change a cluster's overcommit ratios or weigher (refused if a host would have"
              " less capacity than it uses)", read=True)
    sp.add_argument("name")
    sp.add_argument("--vcpu-overcommit", type=float, help="vCPUs placed per physical CPU")
    sp.add_argument("--memory-overcommit", type=float,
                    help="MiB placed per MiB of host memory")
    sp.add_argument("--weigher", choices=("spread", "pack"),
                    help="spread: least loaded host first; pack: most loaded first")
    verb(cluster, "delete", cluster_delete, "delete a cluster without hosts",
         read=True).add_argument("name")
