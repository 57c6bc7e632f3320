"""Hypervisor activities of moving VMs: migrate one domain, find where one is, list a host's.

The libvirt work is ``taskomatic.hypervisor.migration`` (live, offline and cold moves, watched
and aborted) and ``taskomatic.hypervisor.whereabouts`` (locating and recovering a domain); these
activities add Temporal's part: a live migration's progress is heartbeated every second and
signalled to the calling workflow (``PROGRESS_SIGNAL``) at each whole percent, a cold move's
steps are heartbeated.

Cancellation reaches an activity only with a heartbeat's answer, so the worker sends them at
least every ``HEARTBEAT_THROTTLE`` (the SDK's default waits 80 % of the heartbeat timeout). A
cancel of the task (or of an attempt the server no longer knows) aborts the migration job,
waits until it has ended and only then ends the step: cancelled if the VM is still on the
source, done if the move completed first. A worker that stops does not abort it: the job goes
on (heartbeated while the worker drains), and the step's next attempt, on another worker,
watches it to its end.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import libvirt
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.heartbeats import own_heartbeats
from taskomatic import inventory
from taskomatic.errors import ErrorType, task_error
from taskomatic.hypervisor import Hypervisors, Migrator, list_domains, locate
from taskomatic.hypervisor.migration import ProgressCallback
from taskomatic.hypervisor.storage import refresh_pools
from taskomatic.hypervisor.storage_copy import copy_refusal
from taskomatic.inventory.db import Database
from taskomatic.logs import get_logger
from taskomatic.metrics import MIGRATIONS_IN_FLIGHT
from taskomatic.models import (
    ConfirmMoveInput,
    DomainWhereabouts,
    HostDomains,
    HostRef,
    LocateDomainInput,
    MigrateDomainInput,
    MigrationProgressSignal,
    MigrationReport,
    MoveConfirmation,
    RecordMoveInput,
    VmState,
)
from taskomatic.settings import Settings

log = get_logger(component="migration")

PROGRESS_SIGNAL = "migration_progress"
# The worker's max_heartbeat_throttle_interval: a cancel is heard within about this long.
HEARTBEAT_THROTTLE = timedelta(seconds=1)


class MigrationActivities:
    """Moving domains between the worker's hypervisors; signals progress to the calling task."""

    def __init__(self, hypervisors: Hypervisors, db: Database, settings: Settings,
                 client: Client) -> None:
        self.hv = hypervisors
        self.db = db
        self.settings = settings
        self.client = client
        self.migrator = Migrator(hypervisors, settings.migration_save_dir)

    # --- migrate ---------------------------------------------------------------------------

    @activity.defn
    @own_heartbeats
    async def migrate_domain(self, inp: MigrateDomainInput) -> MigrationReport:
        """Migrate the domain (``Migrator.migrate``), the destination's shared pools of its
        disks refreshed first."""
        started = time.monotonic()
        if inp.storage.shared_pools:
            await asyncio.to_thread(refresh_pools, self.migrator.hv, inp.destination,
                                    inp.storage.shared_pools)
        with MIGRATIONS_IN_FLIGHT.track_inprogress():
            report = await self.migrator.migrate(inp, on_progress=self._progress(),
                                                 on_step=_heartbeat,
                                                 abort_on_cancel=_not_a_stopping_worker)
        report.seconds = round(time.monotonic() - started, 3)
        get_logger(vm=inp.name, host=inp.source.name).info(
            "migration", destination=inp.destination.name, mode=report.mode,
            detail=report.detail, seconds=report.seconds)
        return report

    def _progress(self) -> ProgressCallback:
        """Heartbeat every report; signal the workflow when the job gained a whole percent."""
        signalled = -1.0

        async def on_progress(percent: float, detail: str) -> None:
            nonlocal signalled
            _heartbeat(percent, detail)
            if percent - signalled >= 1.0:
                signalled = percent
                await self._signal(MigrationProgressSignal(percent=percent, detail=detail))

        return on_progress

    async def _signal(self, progress: MigrationProgressSignal) -> None:
        workflow_id = activity.info().workflow_id
        if workflow_id is None:
            return
        try:
            handle = self.client.get_workflow_handle(workflow_id)
            await handle.signal(PROGRESS_SIGNAL, progress)
        except RPCError as err:  # progress is a courtesy; the migration goes on
            log.info("progress signal not delivered", error=str(err))

    # --- where is it -----------------------------------------------------------------------

    @activity.defn
    def confirm_move(self, inp: ConfirmMoveInput) -> MoveConfirmation:
        """Where does the VM run after a move (or a failed one)? The inventory is set to match in
        this same step: on the destination, its row moves there and the reservation goes; still
        on the source (resumed if a cold move left it saved), the destination's reservation is
        released. Anywhere else, or nowhere, is an error.

        When it runs on no host that answered and one could not be asked (a destination that
        died after the switch-over), ``locate_domain``'s ``HypervisorUnavailable`` is raised
        after the VM's state is set to ``unknown`` (on its last known host): the inventory no
        longer says it runs on the source, and a Reconcile records it where it is found."""
        try:
            where = self.locate_domain(LocateDomainInput(
                name=inp.name, hosts=[inp.source, inp.destination], save_dir=inp.save_dir,
                recover_on=inp.source.name))
        except ApplicationError as err:
            if err.type == ErrorType.HYPERVISOR_UNAVAILABLE:
                inventory.set_vm_state(self.db, inp.name, VmState.UNKNOWN)
            raise
        if where.host is None:
            raise task_error(ErrorType.DOMAIN_NOT_FOUND,
                             f"{inp.name} is on neither {inp.source.name} nor "
                             f"{inp.destination.name}", host=inp.source.name, vm=inp.name)
        state = where.state or VmState.UNKNOWN
        if where.host == inp.destination.name:
            inventory.record_move(self.db, RecordMoveInput(
                task_id=inp.task_id, name=inp.name, source=inp.source.name,
                destination=inp.destination.name, state=state))
            return MoveConfirmation(name=inp.name, host=where.host, state=state, moved=True,
                                    detail=f"{where.detail}; inventory updated")
        inventory.release_capacity(self.db, inp.task_id)
        inventory.set_vm_state(self.db, inp.name, state)
        return MoveConfirmation(name=inp.name, host=where.host, state=state, moved=False,
                                detail=f"{where.detail}; {inp.destination.name} released")

    @activity.defn
    def locate_domain(self, inp: LocateDomainInput) -> DomainWhereabouts:
        """Which of ``inp.hosts`` has the domain (running first, else defined).

        With ``recover_on``: a domain left saved there by a cold move cut short is restored, and
        stale inactive copies on the other hosts are undefined, so it runs exactly once.
        """
        try:
            return locate(self.hv, inp, self.migrator.save_dir)
        except libvirt.libvirtError as err:  # a call on a domain object, outside hv.call
            first = inp.hosts[0]
            raise self.hv.translate(err, op="locate", uri=first.uri, host=first.name,
                                    vm=inp.name) from err

    @activity.defn
    def check_storage_copy(self, inp: MigrateDomainInput) -> MigrationReport:
        """Whether the domain can move with a storage copy now (``copy_refusal``: running, on
        hypervisors that migrate live); else ``NotMigratable`` with the reason."""
        why = copy_refusal(self.hv, inp.source, inp.destination, inp.name)
        if why is not None:
            raise task_error(ErrorType.NOT_MIGRATABLE, f"not movable with a storage copy: {why}",
                             field="copy_storage", host=inp.source.name, vm=inp.name)
        return MigrationReport(name=inp.name, source=inp.source.name,
                               destination=inp.destination.name, mode="none", changed=False,
                               detail=f"running: its {len(inp.storage.copies)} local disk(s) "
                                      "can be copied")

    @activity.defn
    def list_host_domains(self, host: HostRef) -> HostDomains:
        """Every domain libvirt has on ``host`` (running or defined), by name."""
        return list_domains(self.hv, host)


def _heartbeat(percent: float, detail: str) -> None:
    activity.heartbeat({"percent": percent, "detail": detail})


def _not_a_stopping_worker() -> bool:
    """Whether this activity's cancellation should stop the migration job: yes for a cancel of
    its task, and for an attempt the server no longer knows (its task ended, or it timed out —
    no one may watch the job then, and the task's undo has decided where the VM is); no for a
    worker that stops, when the step's next attempt, on another worker, watches the job."""
    details = activity.cancellation_details()
    return details is None or not details.worker_shutdown
