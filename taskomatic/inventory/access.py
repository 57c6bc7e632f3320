"""Access control in PostgreSQL (migration ``0011``): role grants and API tokens.

An API token is ``tkm_<id>_<secret>``: ``id`` (12 hex characters) finds its row, ``secret``
(32 random bytes, URL-safe base64) is kept only as its SHA-256 — a secret that random needs no
slow hash — and compared in constant time. A revoked token stays listed with ``revoked_at``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from taskomatic.errors import ErrorType, task_error
from taskomatic.inventory.db import Database
from taskomatic.models import Grant, GrantSpec, NewToken, TokenRecord, TokenSpec

TOKEN_PREFIX = "tkm_"
_GRANT_COLUMNS = "SELECT id, subject, role, scope, granted_by, granted_at FROM access_grants"
_TOKEN_COLUMNS = ("SELECT id, subject, description, created_by, created_at, revoked_at "
                  "FROM api_tokens")


def grants_of(db: Database, subject: str) -> list[tuple[str, str]]:
    """The (role, scope) pairs granted to ``subject``."""
    with db.transaction() as cur:
        cur.execute("SELECT role, scope FROM access_grants WHERE subject = %s ORDER BY id",
                    (subject,))
        return [(row["role"], row["scope"]) for row in cur.fetchall()]


def list_grants(db: Database, subject: str | None = None) -> list[Grant]:
    with db.transaction() as cur:
        cur.execute(_GRANT_COLUMNS + " WHERE %(s)s::text IS NULL OR subject = %(s)s ORDER BY id",
                    {"s": subject})
        return [Grant.model_validate(row) for row in cur.fetchall()]


def add_grant(db: Database, spec: GrantSpec, granted_by: str) -> tuple[Grant, bool]:
    """Grant ``spec``; returns the grant and whether it is new (granting twice is a no-op).
    A ``cluster:NAME`` scope must name a cluster the inventory has (InvalidRequest on
    ``scope`` otherwise, nothing granted)."""
    with db.transaction() as cur:
        kind, _, name = spec.scope.partition(":")
        if kind == "cluster":
            cur.execute("SELECT 1 FROM clusters WHERE name = %s FOR SHARE", (name,))
            if cur.fetchone() is None:
                raise task_error(ErrorType.INVALID_REQUEST, f"no cluster {name!r}",
                                 field="scope")
        cur.execute("INSERT INTO access_grants (subject, role, scope, granted_by)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (subject, role, scope) DO NOTHING"
                    " RETURNING id", (spec.subject, spec.role, spec.scope, granted_by))
        added = cur.fetchone() is not None
        cur.execute(_GRANT_COLUMNS + " WHERE subject = %s AND role = %s AND scope = %s",
                    (spec.subject, spec.role, spec.scope))
        return Grant.model_validate(cur.fetchone()), added


def remove_grant(db: Database, grant_id: int) -> Grant:
    """Remove a grant; ``UnknownGrant``-like refusal (InvalidRequest on ``id``) if none."""
    with db.transaction() as cur:
        cur.execute("DELETE FROM access_grants WHERE id = %s"
                    " RETURNING id, subject, role, scope, granted_by, granted_at", (grant_id,))
        row = cur.fetchone()
    if row is None:
        raise task_error(ErrorType.INVALID_REQUEST, f"no grant {grant_id}", field="id")
    return Grant.model_validate(row)


def new_token_text() -> str:
    """A fresh token, ``tkm_<12 hex>_<secret>`` (not stored anywhere yet)."""
    return f"{TOKEN_PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def create_token(db: Database, spec: TokenSpec, created_by: str,
                 token: str | None = None) -> NewToken:
    """Store an API token for ``spec.subject`` (``token``, made by ``new_token_text``, or a new
    one); the returned ``token`` is never stored, only its hash. Storing the same token again
    is a no-op that returns it (the dev stack makes its token before the database is up)."""
    token = token or new_token_text()
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    with db.transaction() as cur:
        cur.execute("INSERT INTO api_tokens (id, subject, secret_sha256, description, created_by)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (token_id, spec.subject, _digest(secret), spec.description, created_by))
        cur.execute(_TOKEN_COLUMNS + " WHERE id = %s", (token_id,))
        row = cur.fetchone()
    return NewToken(**row, token=token)


def list_tokens(db: Database, subject: str | None = None) -> list[TokenRecord]:
    with db.transaction() as cur:
        cur.execute(_TOKEN_COLUMNS + " WHERE %(s)s::text IS NULL OR subject = %(s)s"
                    " ORDER BY created_at, id", {"s": subject})
        return [TokenRecord.model_validate(row) for row in cur.fetchall()]


def revoke_token(db: Database, token_id: str) -> TokenRecord:
    """Revoke a token (idempotent); refusal on ``id`` if there is no such token."""
    with db.transaction() as cur:
        cur.execute("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
                    " WHERE id = %s", (token_id,))
        cur.execute(_TOKEN_COLUMNS + " WHERE id = %s", (token_id,))
        row = cur.fetchone()
    if row is None:
        raise task_error(ErrorType.INVALID_REQUEST, f"no token {token_id!r}", field="id")
    return TokenRecord.model_validate(row)


def token_subject(db: Database, token: str) -> str | None:
    """The subject of a valid, unrevoked API token; ``None`` for anything else."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    if not sep or len(token_id) != 12 or not secret:
        return None
    with db.transaction() as cur:
        cur.execute("SELECT subject, secret_sha256 FROM api_tokens"
                    " WHERE id = %s AND revoked_at IS NULL", (token_id,))
        row = cur.fetchone()
    if row is None or not hmac.compare_digest(row["secret_sha256"], _digest(secret)):
        return None
    return str(row["subject"])


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
