"""The base of every model: ``Model``, checked names, task requests, progress and failures.

Each workflow and activity takes exactly one model, so fields can be added compatibly (new fields
get defaults). Validation lives here, so a bad request is refused before a task exists, with a
message that names the field.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from taskomatic.states import TaskState
from taskomatic.uris import check_migration_uri, check_uri

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit (got {value!r})"
        )
    return value


_VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}")


def check_volume_name(value: str) -> str:
    """A volume name is one file name in its pool: no '/', and it starts with a letter or digit,
    so it is never '.' or '..' (dots inside, as in ``a..b-disk0.qcow2``, are harmless: the
    name of a VM's own volume starts with the VM's name, which may hold them)."""
    if not _VOLUME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-120 characters of letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (no '/'; got {value!r})"
        )
    return value


def _check_volume_path(value: str) -> str:
    pool, sep, volume = value.partition("/")
    if not sep:
        raise ValueError(f"must be POOL/VOLUME (got {value!r})")
    _check_name(pool)
    check_volume_name(volume)
    return value


Name = Annotated[str, AfterValidator(_check_name)]


VolumeName = Annotated[str, AfterValidator(check_volume_name)]


VolumePath = Annotated[str, AfterValidator(_check_volume_path)]


VolumeFormat = Literal["qcow2", "raw"]


LibvirtUri = Annotated[str, AfterValidator(check_uri)]


MigrationUri = Annotated[str, AfterValidator(check_migration_uri)]


class Model(BaseModel):
    """Base for every model: strict about unknown fields, so typos are errors, not no-ops."""

    model_config = ConfigDict(extra="forbid")


_TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def _check_task_id(value: str) -> str:
    if not _TASK_ID_RE.fullmatch(value):
        raise ValueError("must be a task id: 1-200 letters, digits, '.', '_', ':' or '-' "
                         f"(got {value!r})")
    return value


TaskId = Annotated[str, AfterValidator(_check_task_id)]

ROOT_TASK_ID_MAX = 128
"""The longest id of a task that is not a child: a child's id adds ``-<slug>-<VM name>`` (at
most 72 characters) and must still be a ``TaskId`` (200)."""


def check_root_task_id(value: str) -> str:
    """``value`` if it can be the id of a task that is not a child (ValueError if not)."""
    _check_task_id(value)
    if len(value) > ROOT_TASK_ID_MAX:
        raise ValueError(f"must be at most {ROOT_TASK_ID_MAX} characters, leaving room for the "
                         f"ids of its child tasks (got {len(value)})")
    return value


def new_task_id(slug: str, subject: str = "", suffix: str | None = None) -> str:
    """A readable unique task id, ``<slug>-<subject>-<8 hex digits>`` (``vm-create-web1-…``);
    ``subject`` (a resource name or a batch key) may be empty. Always a ``TaskId`` of at most
    ``ROOT_TASK_ID_MAX`` characters for a slug and subject of the registry's and names' sizes."""
    return "-".join(p for p in (slug, subject, suffix or uuid.uuid4().hex[:8]) if p)


def child_task_id(parent: str, slug: str, name: str) -> str:
    """The id of the child task ``slug`` (``migrate``, ``stop``) of task ``parent`` for the VM
    ``name``: ``<parent>-<slug>-<name>``; deterministic (workflow code makes it)."""
    return f"{parent}-{slug}-{name}"


def _check_requester(value: str) -> str:
    if not value.strip() or not value.isprintable() or len(value) > 200:
        raise ValueError(f"must be 1-200 printable characters naming who asks (got {value!r})")
    return value


Requester = Annotated[str, AfterValidator(_check_requester)]


def vm_resource(name: str) -> str:
    return f"vm:{name}"


def cluster_resource(name: str) -> str:
    """A cluster as a resource of the access rules (``taskomatic.access``), not of the
    resource lines: no task names it."""
    return f"cluster:{name}"


def host_resource(name: str) -> str:
    return f"host:{name}"


def pool_resource(name: str) -> str:
    return f"pool:{name}"


class TaskRequest(Model):
    """Fields every task request carries.

    ``after`` lists tasks that must complete before this one runs. ``resources()`` names what the
    task changes ("vm:web1", "host:h1", "pool:images"): tasks sharing a resource run one at a
    time, in submission order.
    """

    requested_by: Requester | None = None
    after: list[TaskId] = Field(default_factory=list, max_length=100)
    ordered: bool = Field(True, description="False skips per-resource ordering (benchmarks, "
                                            "emergency repair); prerequisites still apply")

    def resources(self) -> list[str]:
        return []


class StepState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


class StepRecord(Model):
    name: str
    state: StepState
    started_at: datetime
    finished_at: datetime | None = None
    detail: str | None = None


# Where a task is in its runbook: it plans (validates and reserves in the inventory), runs (on
# the hypervisor) and finalizes (records the outcome); then it is done, or it compensates (runs
# its undos, newest first) and has failed.
Phase = Literal["plan", "run", "finalize", "compensate", "done", "failed"]


class TaskProgress(Model):
    """Answer of every task's ``progress`` query."""

    task_id: str
    kind: str
    phase: Phase
    current_step: str | None = None
    steps: list[StepRecord] = []
    vm: str | None = None
    host: str | None = None
    state: TaskState = "new"
    waiting_on: list[str] = []
    percent: float | None = Field(None, description="how far the task's long step is, 0-100")


class TaskFailure(Model):
    """The structured error of a failed task: what failed, where, why, and what was undone."""

    task_id: str
    kind: str
    step: str
    error_type: str
    message: str
    field: str | None = None
    retryable: bool = False
    libvirt_code: int | None = None
    host: str | None = None
    vm: str | None = None
    compensated: list[str] = []
    compensation_failed: list[str] = Field(
        default_factory=list, description="undo steps that failed: check these by hand")
