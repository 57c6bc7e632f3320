"""Access routes: role grants and API tokens, managed by admins (``admin`` on ``*``).

    GET/POST /grants, DELETE /grants/{id}
    GET/POST /tokens, DELETE /tokens/{id}      (a new token's secret is shown once)
    GET /me                                    who the caller is and what it was granted
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query

from starter.access import AccessAdmin
from starter.api.auth import Principal, User, require
from starter.api.deps import Db
from taskomatic.models import Grant, GrantSpec, NewToken, TokenRecord, TokenSpec

router = APIRouter(tags=["access"])


@router.get("/me", response_model=Principal)
async def me(user: User) -> Principal:
    return user


@router.get("/grants", response_model=list[Grant])
async def list_grants(user: User, db: Db,
                      subject: Annotated[str | None, Query(max_length=200)] = None
                      ) -> list[Grant]:
    await require(user, "admin", [], db)
    return await asyncio.to_thread(AccessAdmin(db).grants, subject)


@router.post("/grants", response_model=Grant)
async def add_grant(spec: GrantSpec, user: User, db: Db) -> Grant:
    await require(user, "admin", [], db)
    grant, _ = await asyncio.to_thread(AccessAdmin(db).grant, spec, user.subject)
    return grant


@router.delete("/grants/{grant_id}", response_model=Grant)
async def remove_grant(grant_id: Annotated[int, Path(ge=1, le=2**31 - 1)], user: User, db: Db
                       ) -> Grant:
    await require(user, "admin", [], db)
    return await asyncio.to_thread(AccessAdmin(db).revoke_grant, grant_id)


@router.get("/tokens", response_model=list[TokenRecord])
async def list_tokens(user: User, db: Db,
                      subject: Annotated[str | None, Query(max_length=200)] = None
                      ) -> list[TokenRecord]:
    await require(user, "admin", [], db)
    return await asyncio.to_thread(AccessAdmin(db).tokens, subject)


@router.post("/tokens", response_model=NewToken, status_code=201)
async def create_token(spec: TokenSpec, user: User, db: Db) -> NewToken:
    await require(user, "admin", [], db)
    return await asyncio.to_thread(AccessAdmin(db).create_token, spec, user.subject)


@router.delete("/tokens/{token_id}", response_model=TokenRecord)
async def revoke_token(token_id: Annotated[str, Path(pattern="^[0-9a-f]{12}$")], user: User,
                       db: Db) -> TokenRecord:
    await require(user, "admin", [], db)
    return await asyncio.to_thread(AccessAdmin(db).revoke_token, token_id)
