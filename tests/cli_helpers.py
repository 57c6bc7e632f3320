"""The ``taskomatic`` CLI run in this process: its exit status and what it said on stderr, with
or without a stack behind it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from starter.cli import common
from starter.cli import main as cli
from starter.client import TaskomaticClient
from taskomatic.logs import configure_logging
from taskomatic.settings import Settings

# One CLI at a time: stdout/stderr are redirected for the whole process.
_ONE_AT_A_TIME = threading.Lock()


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``taskomatic ARGV``: (exit status, stderr with its whitespace folded to single spaces).
    Safe to call from a worker thread (``asyncio.to_thread``) while the test's loop runs."""
    err = io.StringIO()
    with _ONE_AT_A_TIME, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        else:
            code = 0
    return code, " ".join(err.getvalue().split())


def named_field(stderr: str) -> str | None:
    """The field a refusal names (``error: FIELD: reason``), or None."""
    named = re.search(r"error: ([a-z_]+(\[[0-9]+\])?(\.[0-9a-z_\[\]]+)*):", stderr)
    return named.group(1) if named else None


@contextlib.contextmanager
def cli_on_stack(monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment,
                 settings: Settings, worker: Worker) -> Iterator[None]:
    """Make every CLI command connect to the test stack (Temporal, inventory, task queue of
    ``settings``), a fresh connection per command as a real ``taskomatic`` process makes. Run the
    CLI in a thread (``asyncio.to_thread(run_cli, argv)``) so the test's worker keeps working."""
    target = temporal_env.client.service_client.config.target_host
    stack = settings.model_copy(update={"temporal_address": target})

    async def connect() -> TaskomaticClient:
        return await TaskomaticClient.connect(stack)

    assert worker is not None
    monkeypatch.setattr(common, "connect", connect)
    try:
        yield
    finally:
        configure_logging("console", "info")


async def run_cli_async(argv: list[str]) -> tuple[int, str]:
    """``run_cli`` on a thread of its own, for tests whose loop runs the worker."""
    return await asyncio.to_thread(run_cli, argv)
