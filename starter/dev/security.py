"""Encryption and the API for ``taskomatic dev``: a key, the API with an admin token, and the
Web UI's codec endpoint served by the API.

Unless keys are configured (or ``TASKOMATIC_DEV_ENCRYPTION=false``), the dev stack generates an
AES-256 key in ``<state>/encryption.keys``. It always starts the HTTP API (``python -m
starter.api.serve``) on ``TASKOMATIC_API_ADDRESS``, with an admin API token for the subject
``dev-admin`` in ``<state>/api-token`` (both files mode 0600, kept across runs; the token is
made before the database is up and stored, hashed, once it is). With encryption on, the Web UI's
codec endpoint is the API's ``/codec`` with that token in the path: the dev server's UI cannot
send an Authorization header, so anyone who can open the dev UI can decode, which is the point
of a local dev UI (see README "Security").
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from starter.access import AccessAdmin
from starter.dev.processes import Child, DevError, port_in_use
from taskomatic.codec import CodecError, key_entry, new_key
from taskomatic.inventory import access
from taskomatic.inventory.db import get_database
from taskomatic.models import GrantSpec, TokenSpec
from taskomatic.settings import Settings, split_address
from taskomatic.temporal import key_ring

STOP_SECONDS = 5.0
DEV_ADMIN = "dev-admin"
TOKEN_FILE = "api-token"


class Supervisor(Protocol):
    """What starting the API needs of the dev stack (``DevStack`` is one)."""

    dir: Path

    def spawn_python(self, name: str, module: str, log_name: str, settings: Settings,
                     stop_seconds: float) -> Child:
        """``python -m MODULE`` as a supervised child with the stack's settings."""
        ...

    async def await_ready(self, child: Child, ready: Callable[[], Awaitable[bool]],
                          not_ready: str, interval: float) -> None:
        """Wait until ``ready()``; DevError if ``child`` dies first or it takes too long."""
        ...


def encryption_on(settings: Settings) -> bool:
    return settings.encryption_key_file is not None or settings.encryption_keys is not None


def prepare(state_dir: Path, base: Settings, error: Callable[[str], Exception]) -> Settings:
    """``base`` with the dev key filled in where nothing is configured, and the dev admin's
    API token file made (``<state>/api-token``)."""
    _secret_file(state_dir / TOKEN_FILE, lambda: access.new_token_text() + "\n")
    try:
        split_address(base.api_address, "TASKOMATIC_API_ADDRESS")
    except ValueError as err:
        raise error(str(err)) from None
    if not base.dev_encryption:
        return base
    update: dict[str, Any] = {}
    if not encryption_on(base):
        stamp = datetime.now(UTC).strftime("%Y%m%d")
        update["encryption_key_file"] = _secret_file(
            state_dir / "encryption.keys", lambda: key_entry(f"dev-{stamp}", new_key()))
    settings = base.model_copy(update=update)
    try:
        key_ring(settings)
    except CodecError as err:
        raise error(str(err)) from None
    return settings


def admin_token(state_dir: Path) -> str:
    """The dev admin's API token (from ``<state>/api-token``)."""
    return (state_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()


def _secret_file(path: Path, make: Callable[[], str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(make())
    return path.resolve()


def ui_codec_flags(settings: Settings, state_dir: Path) -> list[str]:
    """The dev server's ``--ui-codec-endpoint`` (the API's codec), when encryption is on."""
    if not (settings.dev_encryption and encryption_on(settings)):
        return []
    return ["--ui-codec-endpoint",
            f"http://{settings.api_address}/codec/{admin_token(state_dir)}"]


def security_env(settings: Settings) -> dict[str, str]:
    """Security settings other processes need (file paths and addresses, never secrets)."""
    env = {"TASKOMATIC_API_ADDRESS": settings.api_address}
    if settings.encryption_key_file is not None:
        env["TASKOMATIC_ENCRYPTION_KEY_FILE"] = str(settings.encryption_key_file)
    return env


def _install_admin(state_dir: Path, settings: Settings) -> None:
    db = get_database(settings.database_url)
    try:
        admin = AccessAdmin(db)
        admin.grant(GrantSpec(subject=DEV_ADMIN, role="admin", scope="*"), "taskomatic dev")
        admin.create_token(TokenSpec(subject=DEV_ADMIN, description="taskomatic dev"),
                           "taskomatic dev", admin_token(state_dir))
    finally:
        db.close()


async def start_api(stack: Supervisor, settings: Settings) -> None:
    """Grant ``dev-admin`` admin and store its token, then run the API (``python -m
    starter.api.serve``) as a supervised child of ``stack`` and wait until it listens."""
    host, port = split_address(settings.api_address, "TASKOMATIC_API_ADDRESS")
    if port_in_use(host, port):
        raise DevError(f"port {port} on {host} (the API) is already in use: stop what uses "
                       "it or set TASKOMATIC_API_ADDRESS")
    await asyncio.to_thread(_install_admin, stack.dir, settings)
    child = stack.spawn_python("API", "starter.api.serve", "api.log", settings, STOP_SECONDS)

    async def listening() -> bool:
        return await asyncio.to_thread(_listening, host, port)

    await stack.await_ready(child, listening, f"the API did not listen on {host}:{port}",
                            interval=0.1)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def summary_rows(settings: Settings) -> list[tuple[str, str]]:
    if not encryption_on(settings):
        return [("Encryption", "off (payloads stored in plaintext)")]
    source = str(settings.encryption_key_file or "TASKOMATIC_ENCRYPTION_KEYS")
    rows = [("Encryption", f"AES-256-GCM payloads, keys in {source}")]
    if settings.dev_encryption:
        rows.append(("Codec", f"http://{settings.api_address}/codec (the API; the Web UI "
                              "uses the dev admin's token)"))
    return rows
