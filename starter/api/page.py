"""``GET /ui``: a small read-only page over the API — hosts (state, load), VMs, tasks running and
waiting (with what they wait on), recently finished and failed — that updates live from the
audit stream (``GET /events/stream``, Server-Sent Events) and links each task to its history in
the Temporal Web UI (``Settings.temporal_ui_url``).

Plain HTML and a little JavaScript (``page.html`` beside this module), nothing to build or
download. The page itself is public and holds no data: it asks for an API token (kept in the
tab's session storage) and sends it as a bearer token with every call, so it shows exactly what
the token's subject may read.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])


@cache
def _template() -> str:
    return (resources.files("starter.api") / "page.html").read_text(encoding="utf-8")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    """The page, with where the Temporal Web UI is and the namespace filled in."""
    settings = request.app.state.settings
    config = json.dumps({"temporal_ui": settings.temporal_ui_url.rstrip("/"),
                         "namespace": settings.temporal_namespace}).replace("<", "\\u003c")
    return HTMLResponse(_template().replace("__CONFIG__", config),
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                 "frame-ancestors 'none'"})
