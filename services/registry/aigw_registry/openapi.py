"""``/api/v2/openapi.json``, generated from the route table (``api.ROUTES``) and its Structs (``aigw_common.openapi``)."""

from __future__ import annotations

from typing import Any

from aigw_common.openapi import finish

DOCUMENT: dict[str, Any] = dict(title="aigw registry", version="2",
                                description="Providers, keys and identity of aigw. Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """The registry's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    from .api import ROUTES  # the route table imports this module

    return finish(ROUTES, **DOCUMENT)


__all__ = ["DOCUMENT", "document"]
