"""Who may do what: roles granted on scopes, and the rule that decides (pure functions, no I/O).

After oVirt's permissions (a role on an object, inherited by what the object contains) and
Proxmox VE's ACL paths. The rules:

- **Roles** (``ROLES``): ``viewer`` may ``read``; ``operator`` may ``read`` and ``operate``
  (submit tasks, cancel them); ``admin`` may also ``admin`` (register hosts, manage grants and
  API tokens). A higher role includes every permission of the lower ones.
- **Scopes** (``parse_scope``): ``*`` (everything), ``cluster:NAME`` (the cluster's hosts and
  the VMs and pools on them, a shared pool of the cluster included), ``host:NAME`` (the host,
  and the VMs and pools on it), ``vm:PATTERN`` (VMs whose name matches the shell-style
  ``PATTERN``: ``web*``, ``db?``), ``pool:NAME`` (the pool and its volumes).
- **Resources** are the names tasks declare for their resource lines (``vm:web1``,
  ``host:h1``, ``pool:images``; ``taskomatic.models.vm_resource`` …), and ``cluster:NAME`` for
  a cluster itself (``cluster_resource``: its routes). A grant covers a resource if its scope
  matches the resource itself, or — for a ``host:`` scope — the host the resource lies on
  (``located``: resource → host name), or — for a ``cluster:`` scope — the cluster the
  resource is in (``clustered``: resource → cluster name: a host's cluster, the cluster of the
  host a VM or pool lies on, or the cluster a create request names). The caller reads both
  from the inventory; a resource missing from them is covered by no host or cluster scope.
- ``permits(grants, permission, resource, located, clustered)`` is true if any grant of a role
  holding the permission covers the resource. No grant, no access.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Literal

Role = Literal["viewer", "operator", "admin"]
Permission = Literal["read", "operate", "admin"]

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "operate"}),
    "admin": frozenset({"read", "operate", "admin"}),
}
SCOPE_KINDS = ("cluster", "host", "vm", "pool")
EVERYTHING = "*"


def parse_scope(scope: str) -> tuple[str, str]:
    """``scope`` as (kind, name or pattern): ``("*", "*")`` or ``("host", "h1")`` …

    Raises ValueError saying what a scope is (``*``, ``cluster:NAME``, ``host:NAME``,
    ``vm:PATTERN``, ``pool:NAME``) for anything else. (Whether the cluster exists is the
    inventory's to say: ``taskomatic.inventory.access.add_grant``.)
    """
    if scope == EVERYTHING:
        return EVERYTHING, EVERYTHING
    kind, sep, name = scope.partition(":")
    if not sep or kind not in SCOPE_KINDS or not name or len(scope) > 200 or any(
            c.isspace() or not c.isprintable() for c in name):
        raise ValueError("must be '*', 'cluster:NAME', 'host:NAME', 'vm:PATTERN' or "
                         f"'pool:NAME' (got {scope!r})")
    return kind, name


def covers(scope: str, resource: str, located: Mapping[str, str] | None = None,
           clustered: Mapping[str, str] | None = None) -> bool:
    """Does ``scope`` cover ``resource`` (``vm:web1``)? ``located`` maps resources to the host
    they lie on (a VM's host, a pool's host), for ``host:`` scopes; ``clustered`` maps
    resources to their cluster (hosts too), for ``cluster:`` scopes."""
    kind, name = parse_scope(scope)
    if kind == EVERYTHING:
        return True
    r_kind, _, r_name = resource.partition(":")
    if kind == "vm":
        return r_kind == "vm" and fnmatchcase(r_name, name)
    if kind == "pool":
        return r_kind == "pool" and r_name == name
    if kind == "cluster":  # the cluster itself and what is in it
        return resource == f"cluster:{name}" or (clustered or {}).get(resource) == name
    # host: the host itself and what lies on it
    return resource == f"host:{name}" or (located or {}).get(resource) == name


def permits(grants: Iterable[tuple[str, str]], permission: Permission, resource: str,
            located: Mapping[str, str] | None = None,
            clustered: Mapping[str, str] | None = None) -> bool:
    """Is ``permission`` on ``resource`` given by one of ``grants`` ((role, scope) pairs)?"""
    return any(permission in ROLES.get(role, ()) and covers(scope, resource, located, clustered)
               for role, scope in grants)


def permits_somewhere(grants: Iterable[tuple[str, str]], permission: Permission) -> bool:
    """Does any grant give ``permission`` on anything at all (for calls about no resource)?"""
    return any(permission in ROLES.get(role, ()) for role, _ in grants)


def permits_everything(grants: Iterable[tuple[str, str]], permission: Permission) -> bool:
    """Is ``permission`` given on ``*`` (for calls about the installation as a whole)?"""
    return any(permission in ROLES.get(role, ()) and scope == EVERYTHING for role, scope in grants)
