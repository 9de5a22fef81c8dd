"""``/api/v2/openapi.json``, generated from the route table and the body Structs (``aigw_common.openapi``)."""

from __future__ import annotations

from typing import Any

from aigw_common.openapi import Query, Route
from aigw_common.openapi import build as _build

from .models import ErrorOut


def build(routes: list[Route], *, title: str = "aigw registry", version: str = "2") -> dict[str, Any]:
    return _build(routes, title=title, version=version, error=ErrorOut,
                  description="Providers, keys and identity of aigw. Errors are {message, detail, validations}.")


__all__ = ["Query", "Route", "build"]
