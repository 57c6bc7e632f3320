"""``taskomatic token …`` and ``taskomatic grant …``: who may use the HTTP API, and for what.

    taskomatic token create SUBJECT [--description TEXT]   prints the token once
    taskomatic token list [--subject S]
    taskomatic token revoke ID
    taskomatic grant add SUBJECT ROLE [SCOPE]               ROLE: viewer|operator|admin
    taskomatic grant list [--subject S]                     SCOPE: * (default), host:NAME,
    taskomatic grant remove ID                                     vm:PATTERN, pool:NAME

These act on the inventory database directly, as the local administrator (whoever holds the
database credentials). A bad subject, role or scope is refused naming it (exit status 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.table import Table

from starter import validated
from starter.access import AccessAdmin
from starter.cli import render
from starter.cli.common import console, noun, verb
from starter.client import caller_identity
from taskomatic.access import ROLES
from taskomatic.inventory.db import get_database
from taskomatic.models import GrantSpec, TokenSpec
from taskomatic.settings import get_settings


def _admin() -> AccessAdmin:
    return AccessAdmin(get_database(get_settings().database_url))


def _me() -> str:
    return f"local:{caller_identity()}"


def token_create(args: argparse.Namespace) -> int:
    spec = validated(TokenSpec, subject=args.subject, description=args.description)
    new = _admin().create_token(spec, _me())
    if args.json:
        render.print_json(new)
    else:
        console.print(f"API token {new.id} for [bold]{new.subject}[/] (shown only now):")
        print(new.token)
    return 0


def _listed(args: argparse.Namespace, rows: Sequence[BaseModel], columns: list[str],
            cells: Callable[[Any], list[str]]) -> int:
    """Print ``rows`` as JSON (``--json``) or as a table of ``columns``; exit status 0."""
    if args.json:
        render.print_json(rows)
        return 0
    table = Table(*columns)
    for row in rows:
        table.add_row(*cells(row))
    console.print(table)
    return 0


def token_list(args: argparse.Namespace) -> int:
    return _listed(args, _admin().tokens(args.subject),
                   ["id", "subject", "description", "created", "revoked"],
                   lambda t: [t.id, t.subject, t.description, f"{t.created_at:%Y-%m-%d %H:%M}",
                              f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else ""])


def token_revoke(args: argparse.Namespace) -> int:
    revoked = _admin().revoke_token(args.id)
    render.print_json(revoked) if args.json else console.print(f"revoked token {revoked.id}")
    return 0


def grant_add(args: argparse.Namespace) -> int:
    spec = validated(GrantSpec, subject=args.subject, role=args.role, scope=args.scope)
    grant, added = _admin().grant(spec, _me())
    if args.json:
        render.print_json(grant)
    else:
        console.print(f"{'granted' if added else 'already granted'}: {grant.subject} is "
                      f"{grant.role} on {grant.scope} (grant {grant.id})")
    return 0


def grant_list(args: argparse.Namespace) -> int:
    return _listed(args, _admin().grants(args.subject),
                   ["id", "subject", "role", "scope", "granted by"],
                   lambda g: [str(g.id), g.subject, g.role, g.scope, g.granted_by])


def grant_remove(args: argparse.Namespace) -> int:
    removed = _admin().revoke_grant(args.id)
    render.print_json(removed) if args.json else console.print(
        f"removed grant {removed.id}: {removed.subject} {removed.role} on {removed.scope}")
    return 0


def add_commands(nouns: Any) -> None:
    """Add the ``token`` and ``grant`` nouns."""
    tokens = noun(nouns, "token", "API tokens for scripts (stored hashed, revocable)")
    sp = verb(tokens, "create", token_create, "make an API token for a subject", read=True)
    sp.add_argument("subject")
    sp.add_argument("--description", default="")
    verb(tokens, "list", token_list, "API tokens (never their secrets)",
         read=True).add_argument("--subject")
    verb(tokens, "revoke", token_revoke, "revoke an API token", read=True).add_argument("id")

    grants = noun(nouns, "grant", "roles granted to subjects on scopes")
    sp = verb(grants, "add", grant_add, "grant a role on a scope", read=True)
    sp.add_argument("subject")
    sp.add_argument("role", choices=sorted(ROLES))
    sp.add_argument("scope", nargs="?", default="*",
                    help="* (everything), cluster:NAME, host:NAME, vm:PATTERN or pool:NAME")
    verb(grants, "list", grant_list, "grants", read=True).add_argument("--subject")
    verb(grants, "remove", grant_remove, "remove a grant", read=True).add_argument("id", type=int)
