"""Helpers of the API tests: an app over the suite's real stack, subjects with grants and API
tokens, and RSA keys with a JWKS for OIDC tokens."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from starter.access import AccessAdmin
from starter.api.serve import server
from taskomatic.inventory.db import Database
from taskomatic.models import GrantSpec, TokenSpec
from taskomatic.settings import Settings


def subject_with(db: Database, grants: list[tuple[str, str]], label: str = "u") -> tuple[str, str]:
    """A fresh subject holding ``grants`` ((role, scope) pairs) and an API token for it:
    (subject, token)."""
    admin = AccessAdmin(db)
    subject = f"{label}-{uuid.uuid4().hex[:8]}"
    for role, scope in grants:
        admin.grant(GrantSpec(subject=subject, role=role, scope=scope), granted_by="test")
    return subject, admin.create_token(TokenSpec(subject=subject), created_by="test").token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Issuer:
    """An OIDC issuer for tests: an RSA key published in a JWKS file, signing access tokens."""

    def __init__(self, jwks_file: Path, issuer: str = "https://idp.test",
                 audience: str = "taskomatic-api", kid: str = "k1") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issuer, self.audience, self.kid = issuer, audience, kid
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig",
                                                   "alg": "RS256"}]}))
        self.jwks_file = jwks_file

    def token(self, subject: str, *, lifetime: float = 300, audience: str | None = None,
              issuer: str | None = None, key: Any = None) -> str:
        now = int(time.time())
        claims = {"sub": subject, "iss": issuer or self.issuer, "aud": audience or self.audience,
                  "iat": now, "exp": now + int(lifetime)}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@contextmanager
def running_api(settings: Settings) -> Iterator[str]:
    """The API on a real uvicorn server (as ``taskomatic api`` runs it) on a free port, in a
    thread; yields its base URL."""
    srv = server(settings, host="127.0.0.1", port=0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
