"""Inventory queries of clusters: create, list, show, change and delete them, and the rule by
which a host joins one (``join_cluster``, called by ``hosts.add_host`` inside its registration
transaction).

A host's usable capacity is one SQL expression (``CAPACITY_COLUMNS``): its explicit capacity,
else what libvirt reported times its cluster's overcommit ratio, rounded down.
"""

from __future__ import annotations

from typing import Any

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import ClusterChange, ClusterRecord, ClusterSpec

DEFAULT_CLUSTER = "default"

# A host's usable capacity (h: hosts, c: its cluster), as vcpus and memory_mib.
CAPACITY_COLUMNS = """
    COALESCE(h.vcpus, floor(h.cpus * c.vcpu_overcommit))::int AS vcpus,
    COALESCE(h.memory_mib, floor(h.physical_memory_mib * c.memory_overcommit))::bigint
        AS memory_mib
"""

_CLUSTER_COLUMNS = """
    SELECT c.id, c.name, c.hypervisor_type, c.cpu_model, c.vcpu_overcommit::float8
           AS vcpu_overcommit, c.memory_overcommit::float8 AS memory_overcommit, c.weigher
    FROM clusters c
"""

_CLUSTER_TOTALS = f"""
    SELECT c.name, h.name AS host, {CAPACITY_COLUMNS},
           (SELECT COALESCE(SUM(vcpus), 0) FROM vms WHERE host_id = h.id)
         + (SELECT COALESCE(SUM(vcpus), 0) FROM reservations WHERE host_id = h.id) AS used_vcpus,
           (SELECT COALESCE(SUM(memory_mib), 0) FROM vms WHERE host_id = h.id)
         + (SELECT COALESCE(SUM(memory_mib), 0) FROM reservations WHERE host_id = h.id)
           AS used_memory_mib
    FROM hosts h JOIN clusters c ON c.id = h.cluster_id
    WHERE %(name)s::text IS NULL OR c.name = %(name)s
    ORDER BY h.name
"""

_SPEC_FIELDS = tuple(ClusterSpec.model_fields)


def create_cluster(db: Database, spec: ClusterSpec) -> tuple[ClusterRecord, bool]:
    """Create a cluster; returns (cluster, created). Creating the same cluster again (every
    field equal) is a no-op; a name taken with other settings is ``InvalidRequest`` on
    ``name``, naming the setting that differs."""
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO clusters (name, hypervisor_type, cpu_model, vcpu_overcommit,"
            " memory_overcommit, weigher) VALUES (%(name)s, %(hypervisor_type)s, %(cpu_model)s,"
            " %(vcpu_overcommit)s, %(memory_overcommit)s, %(weigher)s)"
            " ON CONFLICT (name) DO NOTHING RETURNING id", spec.model_dump())
        created = cur.fetchone() is not None
        existing = _cluster_row(cur, spec.name)
    assert existing is not None
    if not created:
        differs = [f for f in _SPEC_FIELDS if existing[f] != getattr(spec, f)]
        if differs:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"cluster {spec.name!r} already exists with {differs[0]} "
                             f"{existing[differs[0]]!r}", field="name")
    found = get_cluster(db, spec.name)
    assert found is not None
    return found, created


def list_clusters(db: Database) -> list[ClusterRecord]:
    """Every cluster with its hosts and their capacity and use added up, by name."""
    return _read_clusters(db, None)


def get_cluster(db: Database, name: str) -> ClusterRecord | None:
    """One cluster with its hosts and their load, or None if there is none of that name."""
    found = _read_clusters(db, name)
    return found[0] if found else None


def _read_clusters(db: Database, name: str | None) -> list[ClusterRecord]:
    with db.transaction() as cur:
        return _records(cur, name)


def _records(cur: Any, name: str | None) -> list[ClusterRecord]:
    cur.execute(_CLUSTER_COLUMNS + " WHERE %(name)s::text IS NULL OR c.name = %(name)s"
                " ORDER BY c.name", {"name": name})
    clusters = {r["name"]: {k: v for k, v in r.items() if k != "id"} | {"hosts": []}
                for r in cur.fetchall()}
    cur.execute(_CLUSTER_TOTALS, {"name": name})
    for row in cur.fetchall():
        totals = clusters[row["name"]]
        totals["hosts"].append(row["host"])
        for key in ("vcpus", "memory_mib", "used_vcpus", "used_memory_mib"):
            totals[key] = totals.get(key, 0) + int(row[key])
    return [ClusterRecord.model_validate(c) for c in clusters.values()]


# (ratio changed, capacity column, use column, unit) of the capacity check of change_cluster.
_CAPACITIES = (("vcpu_overcommit", "vcpus", "used_vcpus", "vCPUs"),
               ("memory_overcommit", "memory_mib", "used_memory_mib", "MiB"))


def change_cluster(db: Database, name: str, change: ClusterChange) -> ClusterRecord | None:
    """Change cluster ``name``'s placement policy (the fields ``change`` gives); returns the
    cluster as it now is, or None if there is none of that name.

    One transaction locks the cluster's row and then its hosts' rows (``FOR UPDATE``, in id
    order, as ``hosts.lock_hosts``), so no placement reserves on them meanwhile; the ratios
    are written (the trigger ``clusters_capacity``, migration 0006, recomputes the hosts'
    ``host_usage`` totals in the same transaction) and every host's capacity re-read by
    ``CAPACITY_COLUMNS`` (a host with an explicit capacity keeps it). Raises
    ``InvalidRequest`` on ``vcpu_overcommit`` / ``memory_overcommit``, changing nothing, when
    a host's capacity would fall below what its VMs and reservations use ("host 'h1' would
    have 8 vCPUs for 10 in use").
    """
    with db.transaction() as cur:
        cluster_id = _lock_cluster(cur, name)
        if cluster_id is None:
            return None
        cur.execute("SELECT id FROM hosts WHERE cluster_id = %s ORDER BY id FOR UPDATE",
                    (cluster_id,))
        before = _host_totals(cur, name)
        cur.execute("UPDATE clusters SET vcpu_overcommit = COALESCE(%(vcpu_overcommit)s,"
                    " vcpu_overcommit), memory_overcommit = COALESCE(%(memory_overcommit)s,"
                    " memory_overcommit), weigher = COALESCE(%(weigher)s, weigher)"
                    " WHERE id = %(id)s", change.model_dump() | {"id": cluster_id})
        for host, now in _host_totals(cur, name).items():
            for field, capacity, used, unit in _CAPACITIES:
                if now[capacity] < now[used] and now[capacity] < before[host][capacity]:
                    raise task_error(ErrorType.INVALID_REQUEST,
                                     f"host {host!r} would have {now[capacity]} {unit} for "
                                     f"{now[used]} in use (its VMs and reservations)",
                                     field=field, host=host)
        return _records(cur, name)[0]


def delete_cluster(db: Database, name: str) -> ClusterRecord | None:
    """Delete cluster ``name``; returns it as it was, or None if there is none of that name.

    Raises ``InvalidRequest`` on ``name``, deleting nothing, for the default cluster (hosts
    registered without a cluster join it), while hosts belong to it (naming them: remove them
    first) and while grants are scoped to it (``cluster:NAME``; a cluster created later under
    the name would inherit them). The cluster's row is locked first, so neither a host (its
    foreign key) nor a grant (``access.add_grant`` locks the row it names) can join it meanwhile.
    """
    if name == DEFAULT_CLUSTER:
        raise task_error(ErrorType.INVALID_REQUEST,
                         f"the default cluster {name!r} is not deleted (hosts registered"
                         " without a cluster join it)", field="name")
    with db.transaction() as cur:
        if _lock_cluster(cur, name) is None:
            return None
        found = _records(cur, name)[0]
        if found.hosts:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"cluster {name!r} still has hosts: {', '.join(found.hosts)}",
                             field="name")
        cur.execute("SELECT DISTINCT subject FROM access_grants WHERE scope = %s"
                    " ORDER BY subject", (f"cluster:{name}",))
        subjects = [r["subject"] for r in cur.fetchall()]
        if subjects:
            raise task_error(ErrorType.INVALID_REQUEST,
                             f"cluster {name!r} is the scope of grants of "
                             f"{', '.join(subjects)} (remove them first)", field="name")
        cur.execute("DELETE FROM clusters WHERE name = %s", (name,))
    return found


def _lock_cluster(cur: Any, name: str) -> int | None:
    cur.execute("SELECT id FROM clusters WHERE name = %s FOR UPDATE", (name,))
    row = cur.fetchone()
    return None if row is None else int(row["id"])


def _host_totals(cur: Any, name: str) -> dict[str, dict[str, int]]:
    """host name → its capacity and use (``_CLUSTER_TOTALS``) in cluster ``name``."""
    cur.execute(_CLUSTER_TOTALS, {"name": name})
    return {r["host"]: {k: int(r[k]) for k in ("vcpus", "memory_mib", "used_vcpus",
                                               "used_memory_mib")} for r in cur.fetchall()}


def _cluster_row(cur: Any, name: str) -> dict[str, Any] | None:
    cur.execute(_CLUSTER_COLUMNS + " WHERE c.name = %s", (name,))
    row: dict[str, Any] | None = cur.fetchone()
    return row


def join_cluster(cur: Any, host: str, cluster: str | None, hypervisor_type: str,
                 cpu_model: str | None) -> dict[str, Any]:
    """The cluster row host ``host`` joins, after checking that it may; inside the caller's
    registration transaction.

    ``cluster`` None means the default cluster of the host's hypervisor type: ``default`` when
    that cluster has this type or does not exist yet (it is created with this type), else
    ``default-<type>`` (created on first use). So a test-driver host and a QEMU host registered
    without a cluster never share one.

    Raises ``InvalidRequest`` on ``cluster`` for an unknown cluster or one of another hypervisor
    type, and on ``cpu_model`` when the cluster has a CPU baseline the host's CPU model (as
    libvirt reports it; None when not probed) is not.
    """
    if cluster is None:
        cluster = DEFAULT_CLUSTER
        row = _cluster_row(cur, cluster)
        if row is not None and row["hypervisor_type"] != hypervisor_type:
            cluster = f"{DEFAULT_CLUSTER}-{hypervisor_type}"
            row = _cluster_row(cur, cluster)
        if row is None:
            cur.execute("INSERT INTO clusters (name, hypervisor_type) VALUES (%s, %s)"
                        " ON CONFLICT (name) DO NOTHING", (cluster, hypervisor_type))
            row = _cluster_row(cur, cluster)
        assert row is not None
    else:
        row = _cluster_row(cur, cluster)
        if row is None:
            raise task_error(ErrorType.INVALID_REQUEST, f"no cluster named {cluster!r}",
                             field="cluster", host=host)
    if row["hypervisor_type"] != hypervisor_type:
        raise task_error(ErrorType.INVALID_REQUEST,
                         f"host {host!r} is a {hypervisor_type!r} hypervisor; cluster "
                         f"{row['name']!r} takes only {row['hypervisor_type']!r} hosts",
                         field="cluster", host=host)
    if row["cpu_model"] is not None and cpu_model != row["cpu_model"]:
        found = "an unknown CPU model (not probed)" if cpu_model is None else f"CPU {cpu_model!r}"
        raise task_error(ErrorType.INVALID_REQUEST,
                         f"host {host!r} has {found}; cluster {row['name']!r} requires CPU model"
                         f" {row['cpu_model']!r}", field="cpu_model", host=host)
    return row


def placement_policy(cur: Any, *, cluster: str | None = None, vm: str | None = None,
                     host: str | None = None) -> dict[str, Any] | None:
    """The cluster a placement happens in, as its row (``name``, ``hypervisor_type``,
    ``weigher``, …): the cluster named ``cluster`` (``InvalidRequest`` on ``cluster`` if
    unknown), else the cluster of the host VM ``vm`` is on (a move stays in it), else the
    cluster of host ``host``; None when none of them is given or found (any cluster)."""
    if cluster is not None:
        row = _cluster_row(cur, cluster)
        if row is None:
            raise task_error(ErrorType.INVALID_REQUEST, f"no cluster named {cluster!r}",
                             field="cluster", vm=vm)
        return row
    if vm is not None:
        cur.execute(_CLUSTER_COLUMNS + " JOIN hosts h ON h.cluster_id = c.id"
                    " JOIN vms v ON v.host_id = h.id WHERE v.name = %s", (vm,))
        found: dict[str, Any] | None = cur.fetchone()
        if found is not None:
            return found
    if host is not None:
        cur.execute(_CLUSTER_COLUMNS + " JOIN hosts h ON h.cluster_id = c.id WHERE h.name = %s",
                    (host,))
        pinned: dict[str, Any] | None = cur.fetchone()
        return pinned
    return None


# --- affinity groups -------------------------------------------------------------------------


def lock_group(cur: Any, *, vm: str, group: str | None, policy: str | None,
               moving: bool) -> dict[str, Any] | None:
    """The affinity group of a placement, its row locked ``FOR UPDATE`` (placements of one group
    run one at a time, so two can never both take the last host its rule allows), or None.

    A move takes the group the VM is in (``group`` ignored). A create takes ``group``, made on
    first use with ``policy`` (default ``anti-affinity``); an existing group's policy must
    equal ``policy`` when given (``InvalidRequest`` on ``group_policy``).
    """
    if moving:
        cur.execute("SELECT g.id, g.name, g.policy FROM affinity_groups g JOIN vms v"
                    " ON v.affinity_group_id = g.id WHERE v.name = %s FOR UPDATE OF g", (vm,))
        found: dict[str, Any] | None = cur.fetchone()
        return found
    if group is None:
        return None
    cur.execute("INSERT INTO affinity_groups (name, policy) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING", (group, policy or "anti-affinity"))
    cur.execute("SELECT id, name, policy FROM affinity_groups WHERE name = %s FOR UPDATE",
                (group,))
    row: dict[str, Any] = cur.fetchone()
    if policy is not None and row["policy"] != policy:
        raise task_error(ErrorType.INVALID_REQUEST,
                         f"affinity group {group!r} is {row['policy']!r}, not {policy!r}",
                         field="group_policy", vm=vm)
    return row


def host_groups(cur: Any) -> dict[str, frozenset[str]]:
    """host name → the affinity groups with a member there: a VM recorded there or a
    reservation of a task placing one there."""
    cur.execute("SELECT h.name AS host, array_agg(DISTINCT g.name) AS groups FROM ("
                "  SELECT host_id, affinity_group_id FROM vms WHERE affinity_group_id IS NOT NULL"
                "  UNION ALL SELECT host_id, affinity_group_id FROM reservations"
                "  WHERE affinity_group_id IS NOT NULL) m"
                " JOIN hosts h ON h.id = m.host_id JOIN affinity_groups g"
                " ON g.id = m.affinity_group_id GROUP BY h.name")
    return {r["host"]: frozenset(r["groups"]) for r in cur.fetchall()}
