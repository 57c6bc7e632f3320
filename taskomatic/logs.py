"""structlog set-up: pretty on a terminal, JSON lines otherwise.

Activities and workflows bind the task id (and VM/host where known) so every line can be traced to
the task that wrote it.
"""

from __future__ import annotations

import logging
import sys
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
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
        ], foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO))


def get_logger(**bound: Any) -> Any:
    """A logger with ``bound`` fields; resolved lazily, so it follows ``configure_logging``."""
    return structlog.get_logger("taskomatic", **bound)
