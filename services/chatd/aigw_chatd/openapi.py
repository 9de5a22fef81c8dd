"""``/api/experimental/openapi.json`` of chatd, generated from its route table (``routes.ROUTES``): the same
Structs (``models``) are returned by the handlers and describe the responses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aigw_common.openapi import finish, serve_document

from .routes import ROUTES

_DOCUMENT: dict[str, Any] = dict(title="aigw chatd", version="experimental", unavailable=True,
                   description="Chats, model configs and skills of aigw; every model call goes through the gateway. "
                               "Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
