"""``create_app(settings)``: the HTTP API, a thin layer over the starter library.

The starter library (``TaskomaticClient``) stays the implementation; the API adds who is
asking (``starter.api.auth``), one error shape (``starter.api.errors``) and an OpenAPI 3.1
document generated from the pydantic models (committed as ``starter/api/openapi.json``;
``python -m starter.api.spec`` rewrites it). Keys and database credentials stay in this process.

Routers, one module each: ``tasks`` (submit every kind of the registry, batches, list, show,
cancel), ``inventory`` (hosts, VMs, pools, volumes), ``clusters`` (list, show, create, change,
delete), ``access`` (grants and API tokens), ``codec`` (the Temporal Web UI's ``/codec/encode``
and ``/codec/decode``).
"""

from __future__ import annotations

from fastapi import FastAPI

from starter.api import access, clusters, codec, errors, events, inventory, page, tasks
from starter.api.auth import Authenticator
from starter.client import TaskomaticClient
from taskomatic.inventory.db import Database, get_database
from taskomatic.settings import Settings

TITLE = "taskomatic"
VERSION = "1"


def create_app(settings: Settings, client: TaskomaticClient | None = None,
               db: Database | None = None) -> FastAPI:
    """The API app for ``settings``. ``client``: a connected starter client to use (else one
    is connected on first need, so the API starts while Temporal is down and answers 503);
    ``db``: the inventory (else the settings' database)."""
    app = FastAPI(title=TITLE, version=VERSION, openapi_url="/openapi.json",
                  description=__doc__)
    app.state.settings = settings
    app.state.db = db or (client.db if client else get_database(settings.database_url))
    app.state.client = client
    app.state.authenticator = Authenticator(settings, app.state.db)
    errors.install(app)
    for router in (tasks.router, inventory.router, clusters.router, access.router,
                   events.router):
        app.include_router(router, responses=errors.ERROR_RESPONSES)
    codec.install(app, settings)
    app.include_router(page.router)
    return app
