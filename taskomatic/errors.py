"""The error model: every failure a task can meet, typed and classified retryable or not.

Activities raise ``ApplicationError``s built here; the type names travel through Temporal, so a
workflow, the starter and the CLI see the same classification. ``ErrorInfo`` rides along as the
error's first detail and carries the field, host, VM and libvirt code where known.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from temporalio.exceptions import ApplicationError


class ErrorType(StrEnum):
    # Transient: the engine retries these.
    HYPERVISOR_UNAVAILABLE = "HypervisorUnavailable"
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"
    # Permanent: retrying cannot help; the task fails and compensates.
    INVALID_REQUEST = "InvalidRequest"
    UNKNOWN_HOST = "UnknownHost"
    UNKNOWN_VM = "UnknownVm"
    DUPLICATE_VM = "DuplicateVm"
    NO_CAPACITY = "NoCapacity"
    HOST_NOT_AVAILABLE = "HostNotAvailable"
    DOMAIN_NOT_FOUND = "DomainNotFound"
    DOMAIN_ELSEWHERE = "DomainElsewhere"  # not on the host named, but defined on another
    DUPLICATE_DOMAIN = "DuplicateDomain"
    INVALID_OPERATION = "InvalidOperation"
    INVALID_DEFINITION = "InvalidDefinition"
    NOT_SUPPORTED = "NotSupported"
    UNKNOWN_POOL = "UnknownPool"
    UNKNOWN_VOLUME = "UnknownVolume"
    DUPLICATE_POOL = "DuplicatePool"
    DUPLICATE_VOLUME = "DuplicateVolume"
    STORAGE_IN_USE = "StorageInUse"
    HYPERVISOR_ERROR = "HypervisorError"
    PREREQUISITE_FAILED = "PrerequisiteFailed"
    # Migration: the VM stays where it was (the engine checks) and the task may try another host.
    MIGRATION_FAILED = "MigrationFailed"
    MIGRATION_STALLED = "MigrationStalled"  # no progress for the progress timeout; aborted
    MIGRATION_TIMED_OUT = "MigrationTimedOut"  # not done within the completion timeout; aborted
    NOT_MIGRATABLE = "NotMigratable"  # the VM's storage is not seen by any (or the pinned) host


RETRYABLE = frozenset({ErrorType.HYPERVISOR_UNAVAILABLE, ErrorType.DATABASE_UNAVAILABLE})


class ErrorInfo(BaseModel):
    # Strict like ``taskomatic.models.Model``, but built on pydantic alone: the errors import none
    # of our modules, so every module (the host states table included) may raise them.
    model_config = ConfigDict(extra="forbid")

    type: ErrorType
    message: str
    field: str | None = None
    retryable: bool = False
    libvirt_code: int | None = None
    host: str | None = None
    vm: str | None = None


def task_error(
    error_type: ErrorType,
    message: str,
    *,
    field: str | None = None,
    host: str | None = None,
    vm: str | None = None,
    libvirt_code: int | None = None,
) -> ApplicationError:
    """Build the ``ApplicationError`` an activity raises. A ``field`` prefixes the message."""
    retryable = error_type in RETRYABLE
    text = f"{field}: {message}" if field else message
    info = ErrorInfo(
        type=error_type,
        message=text,
        field=field,
        retryable=retryable,
        libvirt_code=libvirt_code,
        host=host,
        vm=vm,
    )
    return ApplicationError(
        text, info.model_dump(mode="json"), type=error_type.value, non_retryable=not retryable
    )


def error_info(err: BaseException) -> ErrorInfo:
    """Recover the ``ErrorInfo`` from an ``ApplicationError`` (or describe any other error)."""
    if isinstance(err, ApplicationError):
        if err.details and isinstance(err.details[0], dict):
            try:
                return ErrorInfo.model_validate(err.details[0])
            except ValueError:
                pass
        known = {t.value for t in ErrorType}
        kind = ErrorType(err.type) if err.type in known else ErrorType.HYPERVISOR_ERROR
        return ErrorInfo(type=kind, message=err.message, retryable=not err.non_retryable)
    return ErrorInfo(type=ErrorType.HYPERVISOR_ERROR, message=str(err) or type(err).__name__)
