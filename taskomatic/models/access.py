"""Models of access control: role grants on scopes and API tokens (rules: ``taskomatic.access``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from taskomatic.access import Role, parse_scope
from taskomatic.models.base import Model


def _check_scope(value: str) -> str:
    parse_scope(value)
    return value


def _check_subject(value: str) -> str:
    if not value or len(value) > 200 or any(not c.isprintable() or c.isspace() for c in value):
        raise ValueError(f"must be 1-200 printable characters without spaces (got {value!r})")
    return value


Scope = Annotated[str, AfterValidator(_check_scope)]
Subject = Annotated[str, AfterValidator(_check_subject)]


class GrantSpec(Model):
    """``role`` on ``scope`` for ``subject``."""

    subject: Subject
    role: Role
    scope: Scope = Field("*", description="'*', 'cluster:NAME', 'host:NAME', 'vm:PATTERN' or "
                                            "'pool:NAME'")


class Grant(GrantSpec):
    id: int
    granted_by: str
    granted_at: datetime


class TokenSpec(Model):
    """An API token to make for ``subject`` (a script's identity)."""

    subject: Subject
    description: Annotated[str, Field(max_length=200)] = ""


class TokenRecord(Model):
    """An API token as listed: never its secret."""

    id: str
    subject: str
    description: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None


class NewToken(TokenRecord):
    """A token just made: ``token`` is shown this once and stored only as a hash."""

    token: str
