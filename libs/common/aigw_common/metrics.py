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

__all__ = ["CollectorRegistry", "Counter", "Gauge", "Histogram", "metrics_handler", "new_registry"]


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def metrics_handler(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    async def handle(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
