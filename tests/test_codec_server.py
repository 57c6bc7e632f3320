"""The codec server: the Web UI's decode/encode endpoints, behind a bearer token, with CORS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from codec_server import CodecServer, allowed_origins
from taskomatic.codec import CodecServerError, KeyRing, codec_token, key_entry, new_key
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings

TOKEN = "s3cret-token-0123456789abcdef"
UI = "http://127.0.0.1:8233"
RING = KeyRing([("k1", new_key())])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = CodecServer(("127.0.0.1", 0), RING, TOKEN, {UI, "http://localhost:8233"})
    server.start_in_thread()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sealed_request(name: str) -> dict[str, Any]:
    plain = pydantic_data_converter.payload_converter.to_payloads(
        [CreateVmRequest(name=name, memory_mib=1024, requested_by="alice")])
    return {"payloads": [json_format.MessageToDict(RING.encrypt(p)) for p in plain]}


def _call(url: str, body: dict[str, Any] | None = None, method: str = "POST",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "X-Namespace": "default", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_no_token_no_plaintext(base_url: str, headers: dict[str, str]) -> None:
    status, got, body = _call(f"{base_url}/decode", _sealed_request("web-secret"), headers=headers)
    assert status == 401 and got["WWW-Authenticate"].startswith("Bearer")
    assert b"web-secret" not in body
    status, _, body = _call(f"{base_url}/wrong-token-0123456789/decode",
                            _sealed_request("web-secret"))
    assert status == 401 and b"web-secret" not in body


@pytest.mark.parametrize("how", ["header", "path"])
def test_authenticated_decode_returns_the_plaintext(base_url: str, how: str) -> None:
    url, headers = ((f"{base_url}/decode", {"Authorization": f"Bearer {TOKEN}", "Origin": UI})
                    if how == "header" else (f"{base_url}/{TOKEN}/decode", {"Origin": UI}))
    status, got, body = _call(url, _sealed_request("web-secret"), headers=headers)
    assert status == 200, body
    assert got["Access-Control-Allow-Origin"] == UI
    payloads = [json_format.ParseDict(p, Payload()) for p in json.loads(body)["payloads"]]
    decoded = pydantic_data_converter.payload_converter.from_payloads(payloads, [CreateVmRequest])
    assert decoded == [CreateVmRequest(name="web-secret", memory_mib=1024, requested_by="alice")]


def test_encode_then_decode_round_trips(base_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    plain = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "eyJhIjoxfQ=="}]}
    status, _, body = _call(f"{base_url}/encode", plain, headers=auth)
    sealed = json.loads(body)
    assert status == 200 and "eyJhIjoxfQ==" not in body.decode()
    assert sealed["payloads"][0]["metadata"]["encryption-key-id"] == "azE="  # "k1"
    status, _, body = _call(f"{base_url}/decode", sealed, headers=auth)
    assert status == 200 and json.loads(body) == plain


def test_cors_preflight_answers_only_the_ui_origin(base_url: str) -> None:
    for origin in (UI, "http://localhost:8233"):
        status, got, _ = _call(f"{base_url}/decode", method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-namespace,content-type,authorization"})
        assert status == 204
        assert got["Access-Control-Allow-Origin"] == origin
        assert "X-Namespace" in got["Access-Control-Allow-Headers"]
        assert "POST" in got["Access-Control-Allow-Methods"]
    status, got, _ = _call(f"{base_url}/decode", method="OPTIONS",
                           headers={"Origin": "http://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in got


def test_bad_requests_get_clear_errors(base_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, body = _call(f"{base_url}/decode", {"nope": 1}, headers=auth)
    assert status == 400 and b"payloads" in body
    other = KeyRing([("k2", new_key())]).encrypt(Payload(data=b"hidden"))
    status, _, body = _call(f"{base_url}/decode",
                            {"payloads": [json_format.MessageToDict(other)]}, headers=auth)
    assert status == 422 and b"'k2'" in body and b"hidden" not in body
    status, _, _ = _call(f"{base_url}/elsewhere", {"payloads": []}, headers=auth)
    assert status == 404


def test_configuration_is_checked(tmp_path: Path) -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(CodecServerError, match="needs the encryption keys"):
        CodecServer.from_settings(base)
    keys = tmp_path / "keys"
    keys.write_text(key_entry("k1", new_key()))
    with pytest.raises(CodecServerError, match="needs a token"):
        CodecServer.from_settings(base.model_copy(update={"encryption_key_file": keys}))
    with pytest.raises(CodecServerError, match="at least 16"):
        codec_token(base.model_copy(update={"codec_server_token_file": _write(tmp_path, "ab")}))
    assert codec_token(base.model_copy(update={
        "codec_server_token_file": _write(tmp_path, TOKEN + "\n")})) == TOKEN
    assert allowed_origins(base) == {UI, "http://localhost:8233"}


def _write(directory: Path, text: str) -> Path:
    path = directory / "token"
    path.write_text(text)
    return path


def test_the_command_refuses_to_start_without_keys_or_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKOMATIC_")}
    cli = [str(Path(sys.executable).parent / "taskomatic"), "codec-server",
           "--address", "127.0.0.1:1"]
    done = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "needs the encryption keys" in done.stderr, done.stderr
    keys = tmp_path / "keys"
    keys.write_text(key_entry("k1", new_key()))
    env["TASKOMATIC_ENCRYPTION_KEY_FILE"] = str(keys)
    done = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "needs a token" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
