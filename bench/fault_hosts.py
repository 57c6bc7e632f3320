"""The hosts of the fault runs (``bench.faults``): what a run needs of them (``RunHosts``), and
fresh libvirt test-driver hosts for every run (``TestDriverHosts``). A lab test brings its own
``RunHosts`` over real libvirtd hosts, which alone can die (``kill-destination``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bench.fault_checks import HostLike
from starter.dev.parts import write_test_host
from taskomatic import inventory
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import HostSpec
from taskomatic.states import HostTransition


class RunHosts(Protocol):
    """The hosts of the runs."""

    def make(self, prefix: str) -> Sequence[HostLike]:
        """The hosts of one run, registered and in service, the source first; names made for
        the run start with ``prefix``."""
        ...

    def retire(self, hosts: Sequence[HostLike]) -> None:
        """After a run: nothing of it may meet a later run (its VMs; its hosts, unless they
        serve the next run too, out of service)."""
        ...

    def kill(self, host: HostLike) -> None:
        """Kill ``host``'s hypervisor (``kill-destination``); NotImplementedError if it cannot
        die."""
        ...

    def revive(self, host: HostLike) -> None:
        """Start ``host``'s hypervisor again after ``kill``; returns once it answers. Called on
        the event loop's thread (a daemon may be tied to the thread that starts it)."""
        ...


class TestDriverHosts:
    """Fresh libvirt test-driver hosts for every run (``count`` of them, each with room for
    ``room`` VMs of 2 vCPUs / 512 MiB), kept alive by ``hv``'s connections; retired hosts are
    marked down. They cannot be killed."""

    __test__ = False  # pytest: not a test class, whatever its name says

    def __init__(self, db: Database, hv: Hypervisors, directory: Path, count: int,
                 room: int) -> None:
        self.db, self.hv, self.dir, self.count, self.room = db, hv, directory, count, room

    def make(self, prefix: str) -> list[HostSpec]:
        vcpus, memory = self.room * 2, self.room * 512
        specs = []
        for i in range(1, self.count + 1):
            name = f"{prefix}-h{i}"
            spec = HostSpec(name=name, uri=write_test_host(self.dir, name, vcpus, memory),
                            vcpus=vcpus, memory_mib=memory)
            inventory.add_host(self.db, spec)
            self.hv.connection(spec.uri)  # the host lives as long as this connection
            specs.append(spec)
        return specs

    def retire(self, hosts: Sequence[HostLike]) -> None:
        for host in hosts:
            inventory.set_host_state(self.db, host.name, HostTransition.MARK_DOWN)

    def kill(self, host: HostLike) -> None:
        raise NotImplementedError("a test-driver host cannot die: its state is the connection")

    def revive(self, host: HostLike) -> None:
        raise NotImplementedError("a test-driver host cannot die: its state is the connection")


