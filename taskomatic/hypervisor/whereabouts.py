"""Where domains are: which of some hosts has a domain (recovering a cold move cut short), and
every domain one host has (with its shape, or just its power state).

A cold move (``taskomatic.hypervisor.migration``) that was cut short can leave a domain saved to
a file on its source, and an inactive copy defined on its destination. ``locate`` with
``recover_on`` puts it back: restored from the file there, the stale copies undefined, so the
domain runs exactly once.

A host that cannot be asked (its libvirtd is down) does not stop ``locate``: a domain running on
a host that answered runs nowhere else, so that answer stands, and the hosts not asked are named
in it. Only when the domain runs on none of the hosts that answered — it may run on one that did
not — is the answer unknown (``HypervisorUnavailable``, which a retry may mend).
"""

from __future__ import annotations

import libvirt
from temporalio.exceptions import ApplicationError

from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor.connections import Hypervisors, lookup, power_state
from taskomatic.hypervisor.domain_xml import shape_of
from taskomatic.hypervisor.migration import save_file
from taskomatic.logs import get_logger
from taskomatic.models import (
    DomainWhereabouts,
    HostDomain,
    HostDomains,
    HostRef,
    LocateDomainInput,
    VmState,
)


def locate(hv: Hypervisors, inp: LocateDomainInput, save_dir: str) -> DomainWhereabouts:
    """Which of ``inp.hosts`` has the domain ``inp.name``: the one it runs on, else the first it
    is defined on (``host`` None if none has it), with its state, the other hosts that also
    define it and the hosts that could not be asked (``unreachable``).

    With ``inp.recover_on``: a domain defined there but running nowhere is restored from its
    save file (in ``inp.save_dir``, else ``save_dir``) if a cold move left one; once it runs
    there alone, inactive copies with its UUID on the other hosts are undefined. A domain of the
    same name but another UUID is left alone.

    Errors: ``HypervisorUnavailable`` when a host could not be asked and the domain runs on none
    of the others — defined nowhere they know of, or only inactive with a cold move's save file
    left (it may run on the host not asked; restoring it could run it twice); any other failed
    connection call as typed by ``Hypervisors.call``; a call on a domain object raises
    ``libvirt.libvirtError``.
    """
    found: dict[str, libvirt.virDomain] = {}
    unreachable: list[str] = []
    for host in inp.hosts:
        try:
            with hv.call("locate", host.uri, host.name, inp.name) as conn:
                dom = lookup(conn, inp.name)
        except ApplicationError as err:
            if err.type != ErrorType.HYPERVISOR_UNAVAILABLE:
                raise
            unreachable.append(host.name)
            continue
        if dom is not None:
            found[host.name] = dom
    active = [h for h, d in found.items() if d.isActive()]
    if unreachable and not active and (not found or _saved(inp, found, save_dir)):
        raise task_error(ErrorType.HYPERVISOR_UNAVAILABLE,
                         f"where {inp.name} is: running on none of "
                         f"{', '.join(h.name for h in inp.hosts if h.name not in unreachable)}"
                         f"; could not ask {', '.join(unreachable)}", host=unreachable[0],
                         vm=inp.name)
    if inp.recover_on and inp.recover_on in found and not active:
        _resume_saved(hv, inp, found[inp.recover_on], save_dir)
        active = [inp.recover_on]
    if inp.recover_on and active == [inp.recover_on]:
        uuid = found[inp.recover_on].UUIDString()
        for name, dom in list(found.items()):
            if name != inp.recover_on and not dom.isActive() and dom.UUIDString() == uuid:
                _undefine_stale(hv, inp, name, dom)
                del found[name]
    not_asked = f" (could not ask {', '.join(unreachable)})" if unreachable else ""
    where = active[0] if active else next(iter(found), None)
    if where is None:
        return DomainWhereabouts(name=inp.name, host=None, detail="on none of "
                                 + ", ".join(h.name for h in inp.hosts))
    state = power_state(found[where])
    others = sorted(h for h in found if h != where)
    detail = f"{state} on {where}" + (f" (also defined on {', '.join(others)})"
                                      if others else "") + not_asked
    return DomainWhereabouts(name=inp.name, host=where, state=state, also_defined_on=others,
                             unreachable=unreachable, detail=detail)


def _saved(inp: LocateDomainInput, found: dict[str, libvirt.virDomain], save_dir: str) -> bool:
    """Whether the domain found (inactive) on ``inp.recover_on`` has a cold move's save file."""
    dom = found.get(inp.recover_on or "")
    return dom is not None and save_file(inp.save_dir or save_dir, dom.UUIDString()).exists()


def _resume_saved(hv: Hypervisors, inp: LocateDomainInput, dom: libvirt.virDomain,
                  save_dir: str) -> None:
    host = next(h for h in inp.hosts if h.name == inp.recover_on)
    save = save_file(inp.save_dir or save_dir, dom.UUIDString())
    if save.exists():
        with hv.call("resume saved", host.uri, host.name, inp.name) as conn:
            conn.restore(str(save))
        save.unlink(missing_ok=True)
        get_logger(vm=inp.name, host=host.name).info("restored from an interrupted move")


def _undefine_stale(hv: Hypervisors, inp: LocateDomainInput, name: str,
                    dom: libvirt.virDomain) -> None:
    host = next(h for h in inp.hosts if h.name == name)
    with hv.call("undefine stale copy", host.uri, host.name, inp.name):
        dom.undefine()
    get_logger(vm=inp.name, host=name).info("stale copy from an interrupted move undefined")


def list_domains(hv: Hypervisors, host: HostRef) -> HostDomains:
    """Every domain libvirt has on ``host`` (running or defined), sorted by name, with its UUID,
    power state, vCPUs and memory in MiB. Errors: as typed by ``Hypervisors.call``."""
    with hv.call("list domains of", host.uri, host.name) as conn:
        domains = []
        for dom in conn.listAllDomains():
            uuid, vcpus, memory = shape_of(dom.XMLDesc())
            domains.append(HostDomain(name=dom.name(), uuid=uuid, state=power_state(dom),
                                      vcpus=vcpus, memory_mib=memory))
    return HostDomains(host=host.name, domains=sorted(domains, key=lambda d: d.name))


def domain_states(hv: Hypervisors, host: str, uri: str) -> dict[str, VmState]:
    """Every domain libvirt has on ``host`` (at ``uri``), running or defined → its power state.
    Errors: as typed by ``Hypervisors.call``."""
    with hv.call("list domains", uri, host) as conn:
        return {d.name(): power_state(d) for d in conn.listAllDomains()}
