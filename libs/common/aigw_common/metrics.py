"""Prometheus helpers: one registry per application, so several services can share a process in tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import (  # re-exported for services
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CollectorRegistry", "Counter", "Gauge", "Histogram", "LabelCap", "metrics_handler", "new_registry"]

OTHER = "other"


class _CachedLabels(MetricWrapperBase):
    """``labels(*values)`` answered from a dict of the children already made, by the values as given.

    prometheus_client's ``labels`` converts and validates every value and takes a lock on each call; the
    gateway calls it several times per request. Label sets here are bounded (admin-made names, enumerated
    statuses and clients, ``LabelCap`` for model names), and so is this cache; ``remove``/``clear`` empty it.
    """

    def labels(self, *values: Any, **kw: Any) -> Any:
        if kw:
            return super().labels(*values, **kw)
        cache: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_aigw_children", {})
        child = cache.get(values)
        if child is None:
            child = cache[values] = super().labels(*values)
        return child

    def remove(self, *values: Any) -> None:
        self.__dict__.get("_aigw_children", {}).clear()
        super().remove(*values)

    def clear(self) -> None:
        self.__dict__.get("_aigw_children", {}).clear()
        super().clear()


class Counter(_CachedLabels, prometheus_client.Counter):
    pass


class Gauge(_CachedLabels, prometheus_client.Gauge):
    pass


class Histogram(_CachedLabels, prometheus_client.Histogram):
    pass


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


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
