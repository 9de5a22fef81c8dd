"""``/api/v2/openapi.json`` of the budget service, generated from its route table (``api.ROUTES``): the same
Structs decode the bodies, are returned by the handlers and describe the responses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aigw_common.openapi import finish, serve_document

from .api import ROUTES

_DOCUMENT: dict[str, Any] = dict(title="aigw budget", unavailable=True,
                   description="Budgets, prices, usage and recorded interceptions of aigw. "
                               "Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
