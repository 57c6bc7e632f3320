"""Requests refused before any task exists: ``RequestError`` and the ways one is made.

A refusal names the request field at fault (``field``, dotted for nested fields, ``None`` for
the request as a whole) and says why (``reason``); ``str(err)`` is ``"field: reason"``. Every
module of the starter library raises it, so it lives apart from the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from taskomatic.errors import error_info
from taskomatic.models import Model


class RequestError(ValueError):
    """A request refused before any task was started; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


def request_error(err: ValidationError) -> RequestError:
    """The first problem of a pydantic validation error, as ``field: reason``."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    named = re.match(r"([a-z_][a-z_.0-9]*): (.*)", message, re.S)
    if named:  # a check across fields names its field in the message
        field = ".".join(filter(None, [field, named.group(1)]))
        message = named.group(2)
    return RequestError(field, message)


def validated(model: type[Model], **fields: Any) -> Any:
    """Build a request model, turning a validation error into a ``RequestError``."""
    try:
        return model(**fields)
    except ValidationError as err:
        raise request_error(err) from None


@contextmanager
def within(prefix: str) -> Iterator[None]:
    """Put ``prefix`` before the field of a ``RequestError`` raised inside: a refusal of a
    batch item's request names the item (``items[2].request`` + ``name``)."""
    try:
        yield
    except RequestError as err:
        raise RequestError(".".join(filter(None, [prefix, err.field])), err.reason) from None


@contextmanager
def refusals() -> Iterator[None]:
    """Turn a permanent refusal of the inventory layer (a typed ``ApplicationError``, see
    ``taskomatic.errors``) into a ``RequestError`` naming its field; a retryable one (the
    inventory is unreachable, not the request's fault) passes through unchanged."""
    try:
        yield
    except ApplicationError as err:
        info = error_info(err)
        if info.retryable:
            raise
        raise RequestError(info.field, info.message.removeprefix(f"{info.field}: ")) from None
