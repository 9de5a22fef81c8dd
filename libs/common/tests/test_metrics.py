"""Our metric classes take shortcuts on the hot calls (cached children, no lock, bisection): what they expose
must be exactly what prometheus_client's own classes expose for the same calls, errors included."""

from __future__ import annotations

import math

import prometheus_client
import pytest

from aigw_common import metrics
from aigw_common.metrics import generate_latest, new_registry

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SAMPLES = [0.0, -1.0, 0.05, 0.0500001, 0.1, 0.7, 1, 2.5, 9.99, 10, 10.01, 1e9, math.inf, math.nan, 0.25]


def _exposition(registry: prometheus_client.CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def _exercise(mod: object) -> prometheus_client.CollectorRegistry:
    r = new_registry()
    c = mod.Counter("c_total", "c", ["a"], registry=r)  # type: ignore[attr-defined]
    g = mod.Gauge("g", "g", ["a"], registry=r)  # type: ignore[attr-defined]
    h = mod.Histogram("h", "h", ["a"], buckets=BUCKETS, registry=r)  # type: ignore[attr-defined]
    plain = mod.Counter("p_total", "p", registry=r)  # type: ignore[attr-defined]
    for i, x in enumerate(SAMPLES):
        label = "x" if i % 2 else "y"
        c.labels(label).inc()
        c.labels(label).inc(2.5)
        g.labels(label).inc(3)
        g.labels(label).dec()
        g.labels(label).dec(0.5)
        h.labels(label).observe(x)
        plain.inc(i)
    return r


def test_exposition_equals_prometheus_clients() -> None:
    assert _exposition(_exercise(metrics)) == _exposition(_exercise(prometheus_client))


def test_the_checks_still_apply() -> None:
    r = new_registry()
    c = metrics.Counter("c_total", "c", ["a"], registry=r)
    g = metrics.Gauge("g", "g", ["a"], registry=r)
    h = metrics.Histogram("h", "h", ["a"], registry=r)
    with pytest.raises(ValueError, match="missing label values"):
        c.inc()
    with pytest.raises(ValueError, match="missing label values"):
        g.dec()
    with pytest.raises(ValueError, match="missing label values"):
        h.observe(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        c.labels("x").inc(-1)


def test_a_removed_child_is_not_answered_from_the_cache() -> None:
    r = new_registry()
    c = metrics.Counter("c_total", "c", ["a"], registry=r)
    c.labels("x").inc(5)
    assert c.labels("x") is c.labels("x")
    c.remove("x")
    c.labels("x").inc()
    assert 'c_total{a="x"} 1.0' in _exposition(r)
    c.clear()
    assert not any(line.startswith("c_total{") for line in _exposition(r))
    c.labels("y").inc()
    assert 'c_total{a="y"} 1.0' in _exposition(r)
