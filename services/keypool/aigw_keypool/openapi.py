"""``/api/v2/openapi.json`` of keypool, generated from its route table (``api.ROUTES``) and response Structs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aigw_common.openapi import finish, serve_document

from .api import ROUTES

_DOCUMENT: dict[str, Any] = dict(title="aigw keypool", unavailable=True,
                   description="Key health of aigw's provider key pools. Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
