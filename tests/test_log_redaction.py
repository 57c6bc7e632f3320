"""Structured logs never carry keys, passwords, tokens or private-key material."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from taskomatic.codec import key_entry, new_key
from taskomatic.logs import REDACTED, configure_logging, get_logger, redact

PEM = ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
       "-----END PRIVATE KEY-----")
KEY_LINE = key_entry("k1", new_key()).strip()


@pytest.fixture
def lines() -> Any:
    out = io.StringIO()
    configure_logging("json", "info", out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    configure_logging("console", "info")


def test_secret_fields_are_redacted_by_name(lines: Any) -> None:
    get_logger().info("connecting", password="hunter2", api_key="ak-123", codec_token="tok-9",
                      encryption_keys=KEY_LINE, private_key=PEM, Authorization="Bearer xyz",
                      key_id="k1", encryption_key_file="/etc/keys", vm="web1", memory_mib=512,
                      nested={"secret": "s3", "host": "h1"})
    (line,) = lines()
    for field in ("password", "api_key", "codec_token", "encryption_keys", "private_key",
                  "Authorization"):
        assert line[field] == REDACTED, field
    assert line["nested"] == {"secret": REDACTED, "host": "h1"}
    assert (line["key_id"], line["encryption_key_file"], line["vm"], line["memory_mib"]) == (
        "k1", "/etc/keys", "web1", 512)
    text = json.dumps(line)
    for secret in ("hunter2", "ak-123", "tok-9", KEY_LINE.split(":")[1], "MIGHAgEA", "xyz"):
        assert secret not in text


@pytest.mark.parametrize(("text", "secret"), [
    (f"loaded {PEM} from disk", "MIGHAgEA"),
    ("db postgresql://app:s3cr3t@db.example/taskomatic is down", "s3cr3t"),
    ("dsn host=db user=app password=s3cr3t dbname=t", "s3cr3t"),
    ("dsn host=db password='with space' dbname=t", "with space"),
    ("GET /x?token=abc123&vm=web1", "abc123"),
    ("header Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
])
def test_secret_values_are_redacted_inside_messages(lines: Any, text: str, secret: str) -> None:
    get_logger().info(text, detail=[text], note=text.encode())
    (line,) = lines()
    assert secret not in json.dumps(line)
    assert REDACTED in line["event"] and REDACTED in line["detail"][0]


def test_exceptions_and_stdlib_records_are_redacted(lines: Any) -> None:
    try:
        raise ConnectionError("cannot connect to postgresql://app:pw-in-url@db/x")
    except ConnectionError:
        get_logger().exception("inventory unreachable")
        logging.getLogger("temporalio.worker").error("password=from-the-sdk failed",
                                                     exc_info=True)
    text = "\n".join(json.dumps(line) for line in lines())
    assert "pw-in-url" not in text and "from-the-sdk" not in text
    assert "ConnectionError" in text  # the exception itself is still reported


def test_redaction_keeps_everything_else() -> None:
    event = {"event": "VM web1 started on host-2", "vm": "web1", "steps": ["define", "start"],
             "uri": "qemu+tls://kvm1/system?pkipath=/etc/pki/kvm1", "count": 3, "ok": True}
    assert redact(event) == event
