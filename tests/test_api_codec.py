"""The Web UI's codec endpoints in the API: per-user credentials (no valid token: 401 and no
plaintext), CORS for the UI's origin only, and a real uvicorn server cutting off clients that
stall."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_helpers import bearer, running_api, subject_with
from google.protobuf import json_format
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter

from taskomatic.codec import KeyRing, encode_payloads, key_entry, new_key
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings

UI = "http://127.0.0.1:8233"
STALL_SECONDS = 1


@pytest.fixture(scope="module")
def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "encryption_keys": SecretStr(key_entry("k1", new_key())), "temporal_ui_url": UI,
        "api_timeout_seconds": STALL_SECONDS})


@pytest.fixture(scope="module")
def api_url(keyed: Settings) -> Iterator[str]:
    with running_api(keyed) as url:
        yield url


def _sealed(keyed: Settings, name: str) -> dict[str, Any]:
    plain = pydantic_data_converter.payload_converter.to_payloads([CreateVmRequest(name=name)])
    ring = KeyRing.parse(keyed.encryption_keys.get_secret_value(), "keys")  # type: ignore[union-attr]
    return {"payloads": [json_format.MessageToDict(p) for p in encode_payloads(ring, plain)]}


def test_decoding_needs_valid_credentials(api_url: str, keyed: Settings, db: Database) -> None:
    name = "secret-vm-name-4711"
    body = _sealed(keyed, name)
    for headers in ({}, bearer("tkm_000000000000_nope"), bearer("not-a-jwt")):
        answer = httpx.post(f"{api_url}/codec/decode", json=body, headers=headers)
        assert answer.status_code == 401
        assert name not in answer.text and set(answer.json()) == {"type", "field", "message"}
    _, token = subject_with(db, [], label="nogrant")
    assert httpx.post(f"{api_url}/codec/decode", json=body,
                      headers=bearer(token)).status_code == 403
    _, token = subject_with(db, [("viewer", "*")])
    for url, headers in ((f"{api_url}/codec/decode", bearer(token)),
                         (f"{api_url}/codec/{token}/decode", {})):  # the dev UI's form
        answer = httpx.post(url, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        data = base64.b64decode(answer.json()["payloads"][0]["data"])
        assert name.encode() in data
    assert httpx.post(f"{api_url}/codec/not-a-token/decode", json=body).status_code == 401


def test_cors_answers_the_ui_origin_only(api_url: str) -> None:
    asked = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
    ok = httpx.options(f"{api_url}/codec/decode", headers={**asked, "Origin": UI})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == UI
    other = httpx.options(f"{api_url}/codec/decode",
                          headers={**asked, "Origin": "http://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


HEADERS = b"POST /codec/decode HTTP/1.1\r\nHost: a\r\n"
BODY_STARTED = HEADERS + b"Content-Type: application/json\r\nContent-Length: 999\r\n\r\n{"


@pytest.mark.parametrize("sent", [b"", HEADERS, BODY_STARTED],
                         ids=["nothing", "half the headers", "half the body"])
def test_a_stalled_client_is_cut_off(api_url: str, sent: bytes) -> None:
    port = int(api_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        sock.settimeout(STALL_SECONDS + 5)
        started = time.monotonic()
        try:
            while sock.recv(4096):  # anything the server says before it closes
                pass
        except TimeoutError:
            pytest.fail("the server kept a stalled connection open")
        held = time.monotonic() - started
    assert held < STALL_SECONDS + 2, held
