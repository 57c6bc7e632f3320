"""The Temporal Web UI's remote codec, in the API: ``POST /codec/decode`` and
``POST /codec/encode`` with ``{"payloads": [...]}`` (Temporal's JSON form of ``Payloads``).

Per user: the caller needs valid credentials (``starter.api.auth``: the UI passes the user's
OIDC access token when its codec setting "pass the user access token" is on, or a script an API
token) and the ``read`` permission somewhere; without them the answer is 401 (403) and no
plaintext. A UI that cannot send headers (the dev server's) may put the caller's own API token
in the path, ``/codec/<token>/decode``: revocable and per user, unlike the old shared token
(the API's access log is off so the path is not written anywhere). Browsers call from the UI's
origin: the API answers CORS preflights for it (``TASKOMATIC_TEMPORAL_UI_URL`` plus
``TASKOMATIC_CODEC_CORS_ORIGINS``) and nobody else's.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, FastAPI, Header, Path, Request
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from starter.api.auth import Authenticator, Principal, User, unauthenticated
from starter.api.errors import ApiError
from taskomatic.access import permits_somewhere
from taskomatic.codec import CodecError, KeyRing, decode_payloads, encode_payloads
from taskomatic.logs import get_logger
from taskomatic.models import Model
from taskomatic.settings import Settings
from taskomatic.temporal import key_ring

log = get_logger(component="api-codec")
router = APIRouter(tags=["codec"])
MAX_PAYLOADS = 1_000


class Payloads(Model):
    """``{"payloads": [{"metadata": {k: base64}, "data": base64}, …]}``."""

    payloads: Annotated[list[dict[str, Any]], Body(max_length=MAX_PAYLOADS)]


def allowed_origins(settings: Settings) -> list[str]:
    """The UI's origin (both loopback spellings for a local UI) and any configured extras."""
    ui = urlsplit(settings.temporal_ui_url)
    origins = {f"{ui.scheme}://{ui.netloc}", *settings.codec_cors_origins}
    for a, b in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")):
        if ui.hostname == a:
            origins.add(f"{ui.scheme}://{ui.netloc.replace(a, b, 1)}")
    return sorted(origins)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the codec routes and CORS for the UI's origin."""
    app.include_router(router)
    app.add_middleware(CORSMiddleware, allow_origins=allowed_origins(settings),
                       allow_methods=["GET", "POST", "OPTIONS"], allow_credentials=True,
                       allow_headers=["Authorization", "Content-Type", "X-Namespace"],
                       max_age=600)


def _ring(request: Request) -> KeyRing:
    ring = key_ring(request.app.state.settings)
    if ring is None:
        raise ApiError(503, "the codec needs the encryption keys: set "
                            "TASKOMATIC_ENCRYPTION_KEY_FILE or TASKOMATIC_ENCRYPTION_KEYS")
    return ring


def _code(request: Request, user: Principal, operation: Literal["encode", "decode"],
          body: Payloads, namespace: str | None) -> Payloads:
    if not permits_somewhere(user.grants, "read"):
        raise ApiError(403, f"{user.subject} lacks the 'read' permission", field="permission")
    try:
        payloads = [json_format.ParseDict(p, Payload()) for p in body.payloads]
    except (json_format.ParseError, ValueError, TypeError) as err:
        raise ApiError(400, f"not a Temporal payload: {type(err).__name__}",
                       field="payloads") from None
    try:
        coded = (decode_payloads if operation == "decode" else encode_payloads)(
            _ring(request), payloads)
    except CodecError as err:
        raise ApiError(422, str(err), field="payloads") from None
    log.info("payloads coded", operation=operation, count=len(coded), subject=user.subject,
             namespace=namespace)
    return Payloads(payloads=[json_format.MessageToDict(p) for p in coded])


@router.post("/codec/{operation}", response_model=Payloads)
async def code(operation: Literal["encode", "decode"], body: Payloads, request: Request,
               user: User,
               x_namespace: Annotated[str | None, Header(max_length=200)] = None) -> Payloads:
    """Encode or decode payloads for the Web UI (``Authorization: Bearer``)."""
    return await asyncio.to_thread(_code, request, user, operation, body, x_namespace)


@router.post("/codec/{token}/{operation}", response_model=Payloads, include_in_schema=False)
async def code_with_path_token(token: Annotated[str, Path(max_length=200)],
                               operation: Literal["encode", "decode"], body: Payloads,
                               request: Request,
                               x_namespace: Annotated[str | None, Header()] = None) -> Payloads:
    """The same, for a UI that cannot send headers: the caller's API token in the path."""
    authenticator: Authenticator = request.app.state.authenticator
    if not token.startswith("tkm_"):
        raise unauthenticated("only an API token may stand in the path")
    user = await authenticator.principal(token)
    return await asyncio.to_thread(_code, request, user, operation, body, x_namespace)
