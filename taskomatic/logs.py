"""structlog set-up: pretty on a terminal, JSON lines otherwise.

Activities and workflows bind the task id (and VM/host where known) so every line can be traced to
the task that wrote it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from temporalio import activity

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def add_task_context(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Inside an activity, stamp the line with its task id (the workflow id) and activity name."""
    if event.get("task_id") is None and activity.in_activity():
        info = activity.info()
        event["task_id"] = info.workflow_id
        event.setdefault("activity", info.activity_type)
    return event


REDACTED = "[redacted]"
# Field names whose values are secrets, whatever they look like ("key_id"s are not).
_SECRET_NAME = re.compile(
    r"(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|"
    r"authorization|cookie|(^|_)keys?$|(^|_)dsn$)")
_SECRET_VALUES = [
    (re.compile(r"-----BEGIN [A-Z0-9 ]*(PRIVATE KEY|CERTIFICATE REQUEST)-----.*?"
                r"(-----END [A-Z0-9 ]*-----|$)", re.S), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"(://[^/\s:@]*:)[^@/\s]+@"), rf"\1{REDACTED}@"),  # user:password@ in URLs
    (re.compile(r"(?i)\b((pass(word|wd)?|secret|token|api[_-]?key|sslpassword)\s*[=:]\s*)"
                r"('[^']*'|\"[^\"]*\"|[^\s&,;]+)"), rf"\1{REDACTED}"),
]


def redact(value: Any) -> Any:
    """``value`` with secrets replaced, recursively through dicts, lists and strings."""
    if isinstance(value, str):
        for pattern, replacement in _SECRET_VALUES:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _secret_name(k) and v is not None
                else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return redact(value.decode("utf-8", errors="replace"))
    return value


def _secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not name.endswith(("_id", "_ids", "_file"))


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]
                   ) -> Mapping[str, Any]:
    """structlog processor: no key, password, token or private key reaches a log line, whether
    it sits under a telling field name or inside a message, URL or formatted exception."""
    redacted: dict[str, Any] = redact(dict(event))
    return redacted


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog (and route stdlib logging, e.g. the Temporal SDK's, through it)."""
    out = stream or sys.stderr
    pretty = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_task_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info, redact_secrets, renderer,
        ], foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO))


def get_logger(**bound: Any) -> Any:
    """A logger with ``bound`` fields; resolved lazily, so it follows ``configure_logging``."""
    return structlog.get_logger("taskomatic", **bound)
