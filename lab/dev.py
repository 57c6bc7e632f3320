"""``taskomatic dev --lab``: the dev stack's hosts are lab hosts instead of test-driver hosts.

The lab is started (or found up) and registered in the dev stack's inventory; a lab this run
started is taken down when the stack stops, one that was already up is left running.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lab.control import lab_down, lab_up
from lab.models import LabError, LabState
from taskomatic import inventory
from taskomatic.inventory.db import Database
from taskomatic.models import HostSpec


class DevLab:
    def __init__(self, lab_dir: Path, cache_dir: Path, console: Console) -> None:
        self.dir, self.cache_dir, self.console = lab_dir, cache_dir, console
        self.state: LabState | None = None
        self.started = False
        self.database_url: str | None = None

    def prepare_hosts(self, database_url: str, count: int, vcpus: int, memory_mib: int
                      ) -> list[HostSpec]:
        """Start the lab (``count`` hosts) or adopt the running one; returns its hosts."""
        report = lab_up(self.dir, count, vcpus=vcpus, memory_mib=memory_mib,
                        database_url=database_url, cache_dir=self.cache_dir)
        assert report.state is not None
        self.state, self.started, self.database_url = report.state, report.changed, database_url
        for note in report.notes:
            self.console.print(f"[dim]{note}[/]")
        specs = [HostSpec(name=h.name, uri=h.uri, vcpus=report.state.vcpus,
                          memory_mib=report.state.memory_mib, migration_uri=h.migration_uri)
                 for h in report.state.hosts]
        if not report.changed:  # already up: make sure this inventory knows it (VMs kept)
            db = Database(database_url, max_connections=1)
            try:
                for spec in specs:
                    inventory.add_host(db, spec)
            except Exception as err:
                raise LabError(f"cannot register the running lab's hosts: {err}") from None
            finally:
                db.close()
        return specs

    def describe(self) -> str:
        state = self.state
        if state is None:
            return "lab"
        return (f"libvirt lab in {state.dir}, QEMU TCG, {state.vcpus} vCPUs / "
                f"{state.memory_mib} MiB each{'' if self.started else ', already up: kept'}")

    def stop(self) -> None:
        if self.started:
            report = lab_down(self.dir, database_url=self.database_url)
            self.console.print(f"[dim]lab down in {report.seconds:.1f} s.[/]")
