"""What routes depend on besides the caller: the starter client and the inventory database."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from starter.api.errors import ApiError
from starter.client import TaskomaticClient
from taskomatic.inventory.db import Database


async def starter_client(request: Request) -> TaskomaticClient:
    """The app's starter client, connected on first need; ApiError 503 if Temporal does not
    answer (the API itself starts without it)."""
    app = request.app
    if app.state.client is None:
        try:
            app.state.client = await TaskomaticClient.connect(app.state.settings)
        except RuntimeError as err:
            raise ApiError(503, f"Temporal does not answer: {err}") from None
    client: TaskomaticClient = app.state.client
    return client


def database(request: Request) -> Database:
    """The inventory database of the app."""
    db: Database = request.app.state.db
    return db


Client = Annotated[TaskomaticClient, Depends(starter_client)]
Db = Annotated[Database, Depends(database)]
