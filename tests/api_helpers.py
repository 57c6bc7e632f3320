"""Helpers of the API tests: an app over the suite's real stack, subjects with grants and API
tokens, and RSA keys with a JWKS for OIDC tokens."""

from __future__ import annotations

import uuid

from starter.access import AccessAdmin
from taskomatic.inventory.db import Database
from taskomatic.models import GrantSpec, TokenSpec


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
