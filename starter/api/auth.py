"""Who is asking (authentication) and may they (authorization), for every API route.

Credentials are ``Authorization: Bearer <token>``, one of:

- an **OIDC access token** (a JWT) signed by a key of the configured JWKS
  (``TASKOMATIC_API_JWKS_FILE`` or ``TASKOMATIC_API_JWKS_URL``, fetched and cached), with the
  configured issuer (``TASKOMATIC_API_OIDC_ISSUER``) and audience
  (``TASKOMATIC_API_OIDC_AUDIENCE``), unexpired, with a ``sub``: the subject;
- an **API token** for scripts (``tkm_<id>_<secret>``, ``taskomatic token create``), stored
  hashed in PostgreSQL and revocable: its subject is the one it was made for.

Anything else — no header, an expired, wrongly signed or wrong-audience JWT, a revoked or
unknown API token — is 401. Only with ``TASKOMATIC_API_LOCAL_ADMIN=true`` (a laptop; off by
default and in production) does a request without credentials act as ``local-admin``.

The subject's grants come from PostgreSQL (``taskomatic grant add``); ``require`` checks a
permission on resources by ``taskomatic.access.permits`` and refuses with 403 naming both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from starter.api.errors import ApiError
from taskomatic import inventory
from taskomatic.access import EVERYTHING, Permission, permits, permits_everything
from taskomatic.inventory import access
from taskomatic.inventory.db import Database
from taskomatic.settings import Settings

LOCAL_ADMIN = "local-admin"
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA"]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="taskomatic"'}
_bearer = HTTPBearer(auto_error=False, description="an OIDC access token (JWT) or an API token")


class Principal(BaseModel):
    """The authenticated caller: ``subject`` and its (role, scope) grants; ``via`` says how
    it proved who it is (``jwt``, ``token`` or ``local``)."""

    subject: str
    grants: list[tuple[str, str]]
    via: str


@dataclass
class Authenticator:
    """Checks bearer tokens against the settings' JWKS and the database's API tokens."""

    settings: Settings
    db: Database
    _jwks_client: jwt.PyJWKClient | None = None

    def __post_init__(self) -> None:
        if self.settings.api_jwks_url:
            self._jwks_client = jwt.PyJWKClient(self.settings.api_jwks_url, cache_keys=True,
                                                lifespan=300, timeout=10)

    async def principal(self, token: str | None) -> Principal:
        """The principal of ``token`` (``None``: no credentials); ApiError 401 otherwise."""
        if token is None:
            if self.settings.api_local_admin:
                return Principal(subject=LOCAL_ADMIN, grants=[("admin", EVERYTHING)],
                                 via="local")
            raise unauthenticated("credentials are required: Authorization: Bearer <token>")
        if token.startswith(access.TOKEN_PREFIX):
            subject = await asyncio.to_thread(access.token_subject, self.db, token)
            if subject is None:
                raise unauthenticated("unknown or revoked API token")
            via = "token"
        else:
            subject = await asyncio.to_thread(self.jwt_subject, token)
            via = "jwt"
        grants = await asyncio.to_thread(access.grants_of, self.db, subject)
        return Principal(subject=subject, grants=grants, via=via)

    def jwt_subject(self, token: str) -> str:
        """The ``sub`` of a valid JWT; ApiError 401 saying why not (blocking: may fetch the
        JWKS)."""
        issuer, audience = self.settings.api_oidc_issuer, self.settings.api_oidc_audience
        if not (issuer and audience) or not (self.settings.api_jwks_file or self._jwks_client):
            raise unauthenticated("OIDC tokens are not accepted here (no issuer, audience and "
                                  "JWKS configured); use an API token")
        try:
            key = self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, audience=audience, issuer=issuer,
                options={"require": ["exp", "iss", "aud", "sub"]}, leeway=30)
        except jwt.PyJWTError as err:
            raise unauthenticated(f"invalid token: {err}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise unauthenticated("invalid token: 'sub' must be a non-empty string")
        return subject

    def _signing_key(self, token: str) -> Any:
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        assert self.settings.api_jwks_file is not None
        try:
            keys = jwt.PyJWKSet.from_json(self.settings.api_jwks_file.read_text())
        except (OSError, json.JSONDecodeError, jwt.PyJWTError) as err:
            raise ApiError(503, f"cannot read the JWKS {self.settings.api_jwks_file}: {err}"
                           ) from None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS")


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, headers=_CHALLENGE)


async def current_user(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The route dependency: who is asking (ApiError 401 if unknown)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.principal(credentials.credentials if credentials else None)


User = Annotated[Principal, Depends(current_user)]


def locate(db: Database, resources: Iterable[str]) -> dict[str, str]:
    """The host each VM or pool among ``resources`` lies on, by the inventory (blocking)."""
    located: dict[str, str] = {}
    for resource in resources:
        kind, _, name = resource.partition(":")
        if kind == "vm" and (vm := inventory.get_vm(db, name)) is not None:
            located[resource] = vm.vm.host
        elif kind == "pool" and (pool := inventory.get_pool(db, name)) is not None:
            located[resource] = pool.pool.host
    return located


def clusters_of(db: Database, resources: Iterable[str], located: Mapping[str, str],
                placed_in: str | None = None) -> dict[str, str]:
    """The cluster each host among ``resources`` is in, and each VM or pool by the host
    ``located`` puts it on, read from the inventory (blocking); see ``in_clusters``."""
    wanted = set(resources)
    hosts = {r.partition(":")[2] for r in wanted if r.startswith("host:")}
    clusters = {h: rec.cluster for h in hosts | set(located.values())
                if (rec := inventory.get_host(db, h)) is not None}
    return in_clusters(wanted, located, clusters, placed_in)


def in_clusters(resources: Iterable[str], located: Mapping[str, str] | None,
                clusters: Mapping[str, str], placed_in: str | None = None) -> dict[str, str]:
    """resource -> cluster: a host's by ``clusters`` (host name -> cluster name), a VM's or
    pool's by the host ``located`` puts it on. A VM or pool on no host is in ``placed_in``
    (the cluster a create request names); one on a host ``clusters`` lacks is in none."""
    clustered: dict[str, str] = {}
    for resource in resources:
        kind, _, name = resource.partition(":")
        host = name if kind == "host" else (located or {}).get(resource)
        if host is not None and host in clusters:
            clustered[resource] = clusters[host]
        elif host is None and placed_in and kind in ("vm", "pool"):
            clustered[resource] = placed_in
    return clustered


def cluster_scoped(user: Principal) -> bool:
    """Does ``user`` hold a ``cluster:`` grant (so resources' clusters must be looked up)?"""
    return any(scope.startswith("cluster:") for _, scope in user.grants)


async def located_for(user: Principal, db: Database, resources: Iterable[str]
                      ) -> dict[str, str]:
    """Where the inventory has each VM or pool among ``resources`` (``locate``) when ``user``
    holds a ``host:`` or ``cluster:`` grant, which reach them by their host; else empty (no
    query)."""
    wanted = set(resources)
    if not wanted or not any(scope.startswith(("host:", "cluster:")) for _, scope in user.grants):
        return {}
    return await asyncio.to_thread(locate, db, wanted)


async def host_clusters(user: Principal, db: Database) -> dict[str, str]:
    """host name -> cluster name from the inventory, for ``can_read``; empty (no query) when
    ``user`` holds no ``cluster:`` grant."""
    if not cluster_scoped(user):
        return {}
    hosts = await asyncio.to_thread(inventory.list_hosts, db)
    return {h.name: h.cluster for h in hosts}


async def require(user: Principal, permission: Permission, resources: Iterable[str],
                  db: Database, placed_on: str | None = None, placed_in: str | None = None
                  ) -> None:
    """ApiError 403, naming the permission and the first resource refused, unless ``user`` has
    ``permission`` on every one of ``resources`` (on ``*`` when there are none). A VM or pool
    the inventory does not know yet lies on ``placed_on`` (the host a create request names)
    and is in the cluster ``placed_in`` (the cluster it names)."""
    wanted = sorted(set(resources))
    if not wanted:
        if not permits_everything(user.grants, permission):
            raise forbidden(user, permission, EVERYTHING)
        return
    by_cluster = cluster_scoped(user)
    located = await located_for(user, db, wanted)
    if placed_on:
        located = {r: placed_on for r in wanted if r.startswith(("vm:", "pool:"))} | located
    clustered = (await asyncio.to_thread(clusters_of, db, wanted, located, placed_in)
                 if by_cluster else {})
    for resource in wanted:
        if not permits(user.grants, permission, resource, located, clustered):
            raise forbidden(user, permission, resource)


def can_read(user: Principal, resources: Iterable[str],
             located: Mapping[str, str] | None = None,
             clusters: Mapping[str, str] | None = None) -> bool:
    """May ``user`` see an object about these resources (one suffices; ``*`` if none)?
    ``located``: where the caller already knows each lies (a listed VM's host);
    ``clusters``: host name -> cluster name, for ``cluster:`` grants (``host_clusters``)."""
    wanted = set(resources)
    if not wanted:
        return permits_everything(user.grants, "read")
    clustered = in_clusters(wanted, located, clusters or {})
    return any(permits(user.grants, "read", r, located, clustered) for r in wanted)


def forbidden(user: Principal, permission: str, resource: str) -> ApiError:
    return ApiError(403, f"{user.subject} lacks the '{permission}' permission on {resource}",
                    field="permission", type="Forbidden")
