"""Models of the reconciliation: the periodic safety net that compares the inventory with libvirt
and with the queue, repairs what it safely can and reports the rest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from taskomatic.models.base import Model, TaskRequest

FindingKind = Literal[
    "stale_claim",          # a place in line held by a task that has ended
    "stale_reservation",    # capacity reserved by a task that has ended
    "state_drift",          # the inventory's power state differs from libvirt's
    "missing_domain",       # in the inventory, not defined on its host
    "location_drift",       # recorded on one host, found (running) on another
    "unmanaged_domain",     # defined on a host, not in the inventory
    "host_unreachable",
]


class ReconcileRequest(TaskRequest):
    # Claims and reservations younger than this are left alone: their task may be starting.
    grace_seconds: float = Field(60.0, ge=0, le=86_400)


class Finding(Model):
    kind: FindingKind
    subject: str
    detail: str
    repaired: bool


class ReconcileInput(Model):
    grace_seconds: float = 60.0


class HostCheck(Model):
    host: str
    uri: str


class Findings(Model):
    findings: list[Finding] = Field(default_factory=list)

    @property
    def detail(self) -> str:
        if not self.findings:
            return "all consistent"
        repaired = sum(f.repaired for f in self.findings)
        return f"{len(self.findings)} found, {repaired} repaired"


class ReconcileReport(Findings):
    task_id: str
    hosts_checked: int = 0
