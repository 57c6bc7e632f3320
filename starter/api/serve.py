"""``taskomatic api``: serve the API on uvicorn at ``TASKOMATIC_API_ADDRESS``.

A client that opens a connection and stalls (sends part of its headers, or nothing) is cut off
after ``TASKOMATIC_API_TIMEOUT_SECONDS`` (uvicorn's keep-alive timeout; the h11 protocol
closes a connection whose request does not complete in that time — see
``tests/test_api_codec.py``), and at most 1,000 connections are served at once.
"""

from __future__ import annotations

import asyncio

import uvicorn

from starter.api.app import create_app
from taskomatic.logs import get_logger
from taskomatic.settings import Settings, split_address

log = get_logger(component="api")


def server(settings: Settings, host: str | None = None, port: int | None = None
           ) -> uvicorn.Server:
    """A uvicorn server of the API for ``settings`` (address overridable)."""
    default_host, default_port = split_address(settings.api_address, "TASKOMATIC_API_ADDRESS")
    config = uvicorn.Config(
        create_app(settings), host=host or default_host,
        port=default_port if port is None else port, access_log=False,  # paths may hold tokens
        log_level="warning", timeout_keep_alive=int(settings.api_timeout_seconds),
        limit_concurrency=1000, h11_max_incomplete_event_size=64 * 1024, lifespan="off")
    return uvicorn.Server(config)


def serve(settings: Settings) -> int:
    """Serve until interrupted; 0."""
    srv = server(settings)
    log.info("API listening", address=settings.api_address)
    asyncio.run(srv.serve())
    return 0
