"""Prometheus helpers: one registry per application, so several services can share a process in tests."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (  # re-exported for services
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CollectorRegistry", "Counter", "Gauge", "Histogram", "LabelCap", "metrics_handler", "new_registry"]

OTHER = "other"


class LabelCap:
    """Bounds the values one label takes when they come from clients (model names): the first ``limit``
    distinct values are kept as they are, every later one is counted as ``other``, so the number of
    series (and the memory behind them) stays fixed under hostile input."""

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def metrics_handler(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    async def handle(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
