"""A provider's forward_headers may name extra client headers, never ones the gateway must not forward."""

from __future__ import annotations

import pytest

from aigw_registry.validate import Problems, provider_settings


@pytest.mark.parametrize(("value", "ok"), [
    ("X-Tenant", True), ("X-Tenant, Ocp-Apim-Trace", True), ("Cookie", False), ("X-Forwarded-For", False),
    ("Metadata-Flavor", False), ("Authorization", False), ("X-AIGW-Token", False), ("Connection", False),
    ("bad header", False), (", ".join(f"X-H{i}" for i in range(33)), False),
])
def test_forward_headers(value: str, ok: bool) -> None:
    p = Problems()
    out = provider_settings(p, "openai", {"forward_headers": value})
    assert (not p.items) is ok, p.items
    if ok:
        assert out["forward_headers"] == value
    else:
        assert p.items[0].field == "settings.forward_headers"
