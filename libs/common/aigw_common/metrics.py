"""Prometheus helpers: one registry per application, so several services can share a process in tests.

Counters, gauges and histograms are prometheus_client's, with the hot calls made cheaper: ``labels`` answers
from a cache, and ``inc``/``dec``/``observe`` on a child add to its float without taking its lock. Every
service updates its metrics on its event loop's thread only (one loop per process; workers are processes,
each with its own series, docs/configuration.md ``AIGW_GATEWAY_WORKERS``), and the exposition reads them on
that same thread, so the lock (~60 % of an ``inc``) guarded against nothing. Code on another thread must not
update these metrics. Anything unusual (exemplars, a negative counter step, NaN, the multiprocess mode's
values, a parent without its labels) takes prometheus_client's own checked path.
"""

from __future__ import annotations

from bisect import bisect_left
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
from prometheus_client.values import MutexValue

__all__ = ["CollectorRegistry", "Counter", "Gauge", "Histogram", "LabelCap", "metrics_handler", "new_registry"]

OTHER = "other"


class _CachedLabels(MetricWrapperBase):
    """``labels(*values)`` answered from a dict of the children already made, by the values as given.

    prometheus_client's ``labels`` converts and validates every value and takes a lock on each call; the
    gateway calls it several times per request. Label sets here are bounded (admin-made names, enumerated
    statuses and clients, ``LabelCap`` for model names), and so is this cache; ``remove``/``clear`` empty it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._aigw_children: dict[tuple[Any, ...], Any] = {}  # made once, not looked up (or built) per call
        super().__init__(*args, **kwargs)

    def labels(self, *values: Any, **kw: Any) -> Any:
        if not kw and (child := self._aigw_children.get(values)) is not None:
            return child
        if kw:
            return super().labels(*values, **kw)
        child = self._aigw_children[values] = super().labels(*values)
        return child

    def remove(self, *values: Any) -> None:
        self._aigw_children.clear()
        super().remove(*values)

    def clear(self) -> None:
        self._aigw_children.clear()
        super().clear()


def _plain(value: object) -> MutexValue | None:
    """``value`` when it is prometheus_client's in-process float (not a multiprocess mmap value)."""
    return value if type(value) is MutexValue else None


class Counter(_CachedLabels, prometheus_client.Counter):
    """``inc`` adds to the child's float directly (see the module docstring: no lock, no checks repeated)."""

    _aigw_value: MutexValue | None = None  # a parent (labels not given) has none: inc goes the checked way

    def _metric_init(self) -> None:
        super()._metric_init()
        self._aigw_value = _plain(self._value)

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        v = self._aigw_value
        if v is not None and amount >= 0 and not exemplar:
            v._value += amount
        else:
            super().inc(amount, exemplar)


class Gauge(_CachedLabels, prometheus_client.Gauge):
    _aigw_value: MutexValue | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        # mostrecent modes refuse inc/dec (prometheus_client sets _is_most_recent only after this runs)
        self._aigw_value = None if self._multiprocess_mode in self._MOST_RECENT_MODES else _plain(self._value)

    def inc(self, amount: float = 1) -> None:
        v = self._aigw_value
        if v is not None:
            v._value += amount
        else:
            super().inc(amount)

    def dec(self, amount: float = 1) -> None:
        v = self._aigw_value
        if v is not None:
            v._value -= amount
        else:
            super().dec(amount)


class Histogram(_CachedLabels, prometheus_client.Histogram):
    """``observe`` finds the bucket by bisection (prometheus_client scans the bounds one by one)."""

    _aigw_buckets: list[MutexValue] | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        values = [self._sum, *self._buckets]
        self._aigw_buckets = self._buckets if all(_plain(v) for v in values) else None

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        b = self._aigw_buckets
        if b is not None and not exemplar and amount == amount:  # NaN (in no bucket) goes the checked way
            self._sum._value += amount
            # the first bound >= amount: the bucket prometheus_client's scan stops at (+Inf ends the list)
            b[bisect_left(self._upper_bounds, amount)]._value += 1
        else:
            super().observe(amount, exemplar)


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
