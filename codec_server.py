"""``taskomatic codec-server``: decrypts payloads for the Temporal Web UI, for callers with a token.

The Web UI, given a codec endpoint, POSTs ``{"payloads": [...]}`` (Temporal's JSON form of
``Payloads``: metadata values and data in base64) to ``<endpoint>/decode`` (and ``/encode``), with
an ``X-Namespace`` header, from the browser: so the server answers CORS preflights for the UI's
origin. Every POST needs the token, either as ``Authorization: Bearer <token>`` or as the first
path segment (``http://127.0.0.1:8234/<token>/decode``, for a UI that cannot send headers, such as
the dev server's); without it the answer is 401 and no plaintext.

Built on the standard library's threading HTTP server: two JSON endpoints and a preflight need no
web framework, and the project gains no dependency for them.
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from taskomatic.codec import (
    CodecError,
    CodecServerError,
    KeyRing,
    codec_server_address,
    codec_token,
    decode_payloads,
    encode_payloads,
)
from taskomatic.logs import configure_logging, get_logger
from taskomatic.settings import Settings, get_settings
from taskomatic.temporal import key_ring

log = get_logger(component="codec-server")

MAX_BODY_BYTES = 8 * 1024 * 1024  # Temporal refuses payloads over 2 MB; a few per request
_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"


def allowed_origins(settings: Settings) -> set[str]:
    """The UI's origin (both loopback spellings for a local UI) and any configured extras."""
    ui = urlsplit(settings.temporal_ui_url)
    origins = {f"{ui.scheme}://{ui.netloc}", *settings.codec_cors_origins}
    for a, b in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")):
        if ui.hostname == a:
            origins.add(f"{ui.scheme}://{ui.netloc.replace(a, b, 1)}")
    return origins


class CodecServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ring: KeyRing, token: str,
                 origins: set[str]) -> None:
        super().__init__(address, _Handler)
        self.ring, self.token, self.origins = ring, token, origins

    @classmethod
    def from_settings(cls, settings: Settings) -> CodecServer:
        ring = key_ring(settings)
        if ring is None:
            raise CodecServerError("the codec server needs the encryption keys: set "
                                   "TASKOMATIC_ENCRYPTION_KEY_FILE or TASKOMATIC_ENCRYPTION_KEYS")
        return cls(codec_server_address(settings), ring, codec_token(settings),
                   allowed_origins(settings))

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="codec-server", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: CodecServer
    protocol_version = "HTTP/1.1"

    def do_OPTIONS(self) -> None:  # CORS preflight: browsers send it without credentials
        if self.headers.get("Origin") not in self.server.origins:
            self._reply(HTTPStatus.FORBIDDEN, {"error": "origin not allowed"}, cors=False)
            return
        self._reply(HTTPStatus.NO_CONTENT, None)

    def do_POST(self) -> None:
        operation, authorized = self._route()
        if operation is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST /encode or /decode"})
        elif not authorized:
            self._reply(HTTPStatus.UNAUTHORIZED, {"error": "a bearer token is required"},
                        extra={"WWW-Authenticate": 'Bearer realm="taskomatic codec"'})
        else:
            self._code(operation)

    def _route(self) -> tuple[str | None, bool]:
        parts = urlsplit(self.path).path.strip("/").split("/")
        operation = parts[-1] if parts[-1] in ("encode", "decode") else None
        if len(parts) > 2:
            return None, False
        given = parts[0] if len(parts) == 2 else ""
        scheme, _, bearer = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = bearer.strip()
        return operation, hmac.compare_digest(given.encode(), self.server.token.encode())

    def _code(self, operation: str) -> None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length.isdigit()
                        else HTTPStatus.LENGTH_REQUIRED,
                        {"error": f"a body of at most {MAX_BODY_BYTES} bytes is required"})
            return
        try:
            body = json.loads(self.rfile.read(int(length)))
            payloads = [json_format.ParseDict(p, Payload()) for p in body["payloads"]]
        except (ValueError, KeyError, TypeError, json_format.ParseError) as err:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"expected {{\"payloads\": [...]}}: "
                                                          f"{type(err).__name__}"})
            return
        try:
            coded = (decode_payloads if operation == "decode" else encode_payloads)(
                self.server.ring, payloads)
        except CodecError as err:
            self._reply(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(err)})
            return
        log.info("payloads coded", operation=operation, count=len(coded),
                 namespace=self.headers.get("X-Namespace"))
        self._reply(HTTPStatus.OK, {"payloads": [json_format.MessageToDict(p) for p in coded]})

    def _reply(self, status: HTTPStatus, body: dict[str, Any] | None, cors: bool = True,
               extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        origin = self.headers.get("Origin")
        if cors and origin in self.server.origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", _ALLOWED_HEADERS)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Vary", "Origin")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # the path may hold the token
        log.debug("request", method=self.command, status=args[1] if len(args) > 1 else None)


# --- command line ----------------------------------------------------------------------------


def serve(settings: Settings) -> int:
    """Serve until interrupted; returns 0. CodecServerError if it cannot listen or the keys,
    token or address are unusable (CodecError if the keys cannot be loaded)."""
    try:
        server = CodecServer.from_settings(settings)
    except OSError as err:
        raise CodecServerError(f"cannot listen on {settings.codec_server_address}: "
                               f"{err.strerror}") from None
    log.info("codec server listening", address=settings.codec_server_address,
             origins=sorted(server.origins), key_ids=server.ring.ids)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskomatic codec-server",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="host:port (default: TASKOMATIC_CODEC_SERVER_ADDRESS, "
                                     "127.0.0.1:8234)")
    return p


def main(argv: list[str] | None = None) -> None:
    """``python -m codec_server [--address HOST:PORT]``, which ``taskomatic codec-server`` runs.

    Exit status: 0 after Ctrl-C or SIGTERM; 2 bad arguments; 3 the keys, the token or the address
    are unusable (``error: <why>`` on stderr).
    """
    args = parser().parse_args(argv)
    settings = get_settings()
    if args.address:
        settings = settings.model_copy(update={"codec_server_address": args.address})
    configure_logging(settings.log_format, settings.log_level)
    try:
        serve(settings)
    except CodecError as err:  # CodecServerError included
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
