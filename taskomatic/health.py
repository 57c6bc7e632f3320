"""The worker's HTTP endpoint: ``/metrics`` (Prometheus text format, ``taskomatic.metrics``),
``/healthz`` (liveness) and ``/readyz`` (readiness), on ``TASKOMATIC_METRICS_ADDRESS``.

A check is a coroutine function returning None when fine, else what is wrong; each runs with a
``CHECK_TIMEOUT_SECONDS`` limit (a check that does not answer in time fails). Both endpoints
answer 200 with ``{"ok": true, "checks": {name: "ok"}}`` or 503 with the failures named — the
shape Docker, Kubernetes and load balancers read (only the status code matters to them).

Deliberately a plain ``asyncio`` server (HTTP/1.0, GET only, one request per connection): it
runs on the worker's event loop, so an answer to ``/healthz`` itself shows that loop turns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taskomatic.logs import get_logger
from taskomatic.settings import split_address

log = get_logger(component="health")

Check = Callable[[], Awaitable[str | None]]
CHECK_TIMEOUT_SECONDS = 3.0


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (``liveness`` checks) and ``/readyz`` (``readiness``
    checks) on ``address`` ("host:port"; port 0 picks a free one: see ``port``)."""

    def __init__(self, address: str, liveness: Mapping[str, Check],
                 readiness: Mapping[str, Check]) -> None:
        self.host, self.port = split_address(address, "TASKOMATIC_METRICS_ADDRESS") \
            if not address.endswith(":0") else (address.rpartition(":")[0], 0)
        self.routes = {"/healthz": liveness, "/readyz": readiness}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health endpoint", address=f"{self.host}:{self.port}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, kind, body = 200, CONTENT_TYPE_LATEST, generate_latest()
            elif path in self.routes:
                status, report = await run_checks(self.routes[path])
                kind, body = "application/json", json.dumps(report).encode()
            else:
                status, kind, body = 404, "text/plain", b"not found\n"
            head = (f"HTTP/1.0 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def run_checks(checks: Mapping[str, Check]) -> tuple[int, dict[str, object]]:
    """Run ``checks`` at once: (200 or 503, {"ok": bool, "checks": {name: "ok" or why}})."""
    async def one(check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"
        except Exception as err:
            return str(err) or type(err).__name__
    results = await asyncio.gather(*(one(c) for c in checks.values()))
    named = {name: r or "ok" for name, r in zip(checks, results, strict=True)}
    ok = all(r is None for r in results)
    return (200 if ok else 503), {"ok": ok, "checks": named}
