"""``/api/v2/openapi.json``, generated from the route table and the body Structs (``aigw_common.openapi``)."""

from __future__ import annotations

from typing import Any

from aigw_common.openapi import Query, Route, finish
from aigw_common.openapi import build as _build

from .models import ErrorOut


def build(routes: list[Route], *, title: str = "aigw registry", version: str = "2") -> dict[str, Any]:
    return _build(routes, title=title, version=version, error=ErrorOut,
                  description="Providers, keys and identity of aigw. Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """The registry's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    from .api import ROUTES  # the route table imports this module

    return finish(ROUTES, title="aigw registry", version="2", error=ErrorOut,
                  description="Providers, keys and identity of aigw. Errors are {message, detail, validations}.")


__all__ = ["Query", "Route", "build", "document"]
