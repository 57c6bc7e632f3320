"""Encryption for ``taskomatic dev``: on by default, with a key and a codec server of its own.

Unless keys are configured (or ``TASKOMATIC_DEV_ENCRYPTION=false``), the dev stack generates an
AES-256 key in ``<state>/encryption.keys`` and a codec-server token in ``<state>/codec-token``
(both mode 0600, kept across runs), starts the codec server (``python -m codec_server``) on
``TASKOMATIC_CODEC_SERVER_ADDRESS`` and gives the Web UI its endpoint, so the UI shows decrypted
inputs while Temporal stores ciphertext. The dev server's UI cannot send an Authorization header,
so its endpoint carries the token in the path: anyone who can open the dev UI can decode, which
is the point of a local dev UI (see README "Security").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from starter.dev.processes import Child, DevError, port_in_use
from taskomatic.codec import CodecError, codec_server_address, codec_token, key_entry, new_key
from taskomatic.settings import Settings
from taskomatic.temporal import key_ring

STOP_SECONDS = 5.0


class Supervisor(Protocol):
    """What starting the codec server needs of the dev stack (``DevStack`` is one)."""

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
    """``base`` with the dev key and token files filled in where nothing is configured."""
    if not base.dev_encryption:
        return base
    update: dict[str, Any] = {}
    if not encryption_on(base):
        stamp = datetime.now(UTC).strftime("%Y%m%d")
        update["encryption_key_file"] = _secret_file(
            state_dir / "encryption.keys", lambda: key_entry(f"dev-{stamp}", new_key()))
    if base.codec_server_token is None and base.codec_server_token_file is None:
        update["codec_server_token_file"] = _secret_file(
            state_dir / "codec-token", lambda: secrets.token_urlsafe(32) + "\n")
    settings = base.model_copy(update=update)
    try:
        key_ring(settings)
        codec_token(settings)
        codec_server_address(settings)
    except CodecError as err:  # CodecServerError included
        raise error(str(err)) from None
    return settings


def _secret_file(path: Path, make: Callable[[], str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(make())
    return path.resolve()


def ui_codec_flags(settings: Settings) -> list[str]:
    """The dev server's ``--ui-codec-endpoint``, when encryption is on."""
    if not (settings.dev_encryption and encryption_on(settings)):
        return []
    return ["--ui-codec-endpoint", f"http://{settings.codec_server_address}/"
                                   f"{codec_token(settings)}"]


def security_env(settings: Settings) -> dict[str, str]:
    """Security settings other processes need (file paths and addresses, never secrets)."""
    env = {"TASKOMATIC_CODEC_SERVER_ADDRESS": settings.codec_server_address}
    for name in ("encryption_key_file", "codec_server_token_file"):
        value = getattr(settings, name)
        if value is not None:
            env[f"TASKOMATIC_{name.upper()}"] = str(value)
    return env


async def start_codec_server(stack: Supervisor, settings: Settings) -> None:
    """Run the codec server (``python -m codec_server``) as a supervised child of ``stack`` and
    wait until it listens."""
    if not (settings.dev_encryption and encryption_on(settings)):
        return
    host, port = codec_server_address(settings)
    if port_in_use(host, port):
        raise DevError(f"port {port} on {host} (codec server) is already in use: stop what uses "
                       "it or set TASKOMATIC_CODEC_SERVER_ADDRESS")
    child = stack.spawn_python("codec server", "codec_server", "codec-server.log",
                               settings, STOP_SECONDS)

    async def listening() -> bool:
        return await asyncio.to_thread(_listening, host, port)

    await stack.await_ready(child, listening,
                            f"the codec server did not listen on {host}:{port}", interval=0.1)


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
        rows.append(("Codec server", f"http://{settings.codec_server_address}  (token in "
                                     f"{settings.codec_server_token_file or 'settings'})"))
    return rows
