"""Is a domain somewhere else? Which hosts define a domain of a given name (and UUID), and every
domain one host has, with its UUID and power state.

A step that does not find a domain where the inventory puts it must tell "gone" from "elsewhere"
before it reports "absent": a VM whose move finished after its task was cancelled runs on another
host, and destroying or stopping "nothing" there would leave that guest running with no inventory
row (or a row on the wrong host). The reconciliation uses the same sightings to record a VM where
it really is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.connections import Hypervisors, lookup, power_state
from taskomatic.models import HostRef, VmState


class Sighting(NamedTuple):
    """A domain seen on a host: where, its UUID and its power state."""

    host: str
    uuid: str
    state: VmState


def sightings(hv: Hypervisors, name: str, hosts: Sequence[HostRef],
              uuid: str | None = None) -> list[Sighting]:
    """The hosts among ``hosts`` (in their order) that define a domain called ``name``, with the
    UUID ``uuid`` when one is given (a domain of that name with another UUID is someone else's).

    Errors: a host that cannot be asked raises as typed by ``Hypervisors.call`` (an unreachable
    one ``HypervisorUnavailable``, retryable): absence there cannot be proven, so it is not
    assumed.
    """
    found: list[Sighting] = []
    for host in hosts:
        with hv.call("look for", host.uri, host.name, name) as conn:
            dom = lookup(conn, name)
            seen = _sighting(host.name, dom) if dom is not None else None
            if seen is not None and (uuid is None or seen.uuid == uuid):
                found.append(seen)
    return found


def host_sightings(hv: Hypervisors, host: HostRef) -> dict[str, Sighting]:
    """Every domain ``host`` has (running or only defined): name → sighting.
    Errors: as typed by ``Hypervisors.call``."""
    with hv.call("list domains of", host.uri, host.name) as conn:
        seen = {d.name(): _sighting(host.name, d) for d in conn.listAllDomains()}
    return {name: s for name, s in seen.items() if s is not None}


def _sighting(host: str, dom: libvirt.virDomain) -> Sighting | None:
    """``dom`` on ``host``, or None if it vanished while we looked (undefined meanwhile)."""
    try:
        return Sighting(host, dom.UUIDString(), power_state(dom))
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def where(seen: Sequence[Sighting]) -> str:
    """Sightings in words: ``running on h2``, ``shutoff on h2 and paused on h3``."""
    return " and ".join(f"{s.state} on {s.host}" for s in seen)


def elsewhere_error(name: str, host: str, seen: Sequence[Sighting]) -> ApplicationError:
    """The ``DomainElsewhere`` refusal of a step on ``name`` at ``host``, which does not have
    it, while ``seen`` (not empty) says where it is: nothing is done, so nothing is orphaned."""
    return task_error(ErrorType.DOMAIN_ELSEWHERE,
                      f"{name} is not on {host}: it is {where(seen)}; nothing done (the "
                      "inventory's location is out of date: run 'taskomatic reconcile now')",
                      host=host, vm=name)
