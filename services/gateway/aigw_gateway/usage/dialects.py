"""The one table from an API endpoint to its dialect: every per-API decision in the gateway goes through it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aigw_common.llm import Endpoint

from .chat import ChatDialect
from .common import Dialect
from .messages import MessagesDialect
from .responses import ResponsesDialect

DIALECTS: Mapping[Endpoint, Dialect] = MappingProxyType(
    {d.endpoint: d for d in (ChatDialect(), ResponsesDialect(), MessagesDialect())}
)
ENDPOINTS: tuple[Endpoint, ...] = tuple(DIALECTS)


def dialect(endpoint: str) -> Dialect:
    """The dialect of ``endpoint``; ``ValueError`` for one the gateway does not bridge."""
    d = DIALECTS.get(endpoint)  # type: ignore[call-overload]  # a str from outside is looked up, not trusted
    if d is None:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    return d
