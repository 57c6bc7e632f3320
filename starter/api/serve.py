"""``taskomatic api``: serve the API on uvicorn at ``TASKOMATIC_API_ADDRESS``.

A client that opens a connection and stalls — sends nothing, part of its headers or part of its
body — is cut off ``TASKOMATIC_API_TIMEOUT_SECONDS`` after the connection opened (or after the
previous response on it): uvicorn itself has no such deadline (its keep-alive timer stops at the
first byte), so ``ReadDeadline`` adds one to its h11 protocol (``tests/test_api_codec.py``
measures it). At most 1,000 connections are served at once.
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from starter.api.app import create_app
from taskomatic.logs import configure_logging, get_logger
from taskomatic.settings import Settings, get_settings, split_address

log = get_logger(component="api")


class ReadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request has not been read in full
    within ``timeout_keep_alive`` seconds of the connection (or the previous response)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.SEND_BODY and self.conn.their_state is not h11.IDLE:
            self._disarm()  # the request is in (or the connection is ending)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            log.info("stalled client cut off", client=self.client,
                     after_seconds=self.timeout_keep_alive)
            self.transport.close()


def server(settings: Settings, host: str | None = None, port: int | None = None
           ) -> uvicorn.Server:
    """A uvicorn server of the API for ``settings`` (address overridable)."""
    default_host, default_port = split_address(settings.api_address, "TASKOMATIC_API_ADDRESS")
    config = uvicorn.Config(
        create_app(settings), host=host or default_host,
        port=default_port if port is None else port, access_log=False,  # paths may hold tokens
        log_level="warning", timeout_keep_alive=settings.api_timeout_seconds,
        limit_concurrency=1000, h11_max_incomplete_event_size=64 * 1024, lifespan="off",
        http=ReadDeadline)
    return uvicorn.Server(config)


def serve(settings: Settings) -> int:
    """Serve until interrupted; 0."""
    srv = server(settings)
    log.info("API listening", address=settings.api_address)
    asyncio.run(srv.serve())
    return 0


def main() -> None:
    """``python -m starter.api.serve`` (what ``taskomatic dev`` runs): the settings' API."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    raise SystemExit(serve(settings))


if __name__ == "__main__":
    main()
