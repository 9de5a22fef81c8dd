"""Key-pool rules without a server: the cooldown a 429 earns, and which 403s are about the key."""

from __future__ import annotations

import email.utils

import pytest

from aigw_gateway.keys import (
    DEFAULT_COOLDOWN,
    MAX_COOLDOWN,
    forbidden_for_other_reason,
    retry_after_seconds,
)

NOW = 1_800_000_000.0


def test_cooldown_from_retry_after() -> None:
    for bad in ("nan", "inf", "-inf", "-5", "1e400", "soon"):
        assert retry_after_seconds({"Retry-After": bad}) == DEFAULT_COOLDOWN
        assert retry_after_seconds({"retry-after-ms": bad}) == DEFAULT_COOLDOWN
    assert retry_after_seconds({}) == DEFAULT_COOLDOWN
    assert retry_after_seconds({"Retry-After": "86400"}) == MAX_COOLDOWN  # real but long: capped
    assert retry_after_seconds({"Retry-After": "12"}) == 12.0
    when = email.utils.formatdate(NOW + 42, usegmt=True)
    assert retry_after_seconds({"Retry-After": when}, now=NOW) == pytest.approx(42.0)


@pytest.mark.parametrize(("body", "other"), [
    (b'{"error":{"code":"model_not_found","message":"no such model"}}', True),
    (b'{"error":{"code":"unsupported_country_region_territory","message":"x"}}', True),
    (b'{"error":{"code":"unsupported_country","message":"x"}}', True),
    (b'{"type":"error","error":{"type":"permission_error","message":"Your key may not use model claude-opus-4"}}', True),
    (b'{"type":"error","error":{"type":"permission_error","message":"This key is disabled"}}', False),
    (b'{"error":{"code":"invalid_api_key","message":"Incorrect API key provided"}}', False),
    (b'{"error":"model_not_found"}', False),
    (b"<html>403 Forbidden (WAF)</html>", False),
    (b'{"message":"You don\'t have access to the model with the specified model ID."}', True),  # Bedrock
    (b'{"message":"The security token included in the request is invalid."}', False),
    (b'{"message":"The request signature we calculated does not match the signature you provided."}', False),
    (b"", False),
    (None, False),
])
def test_which_403s_are_not_about_the_key(body: bytes | None, other: bool) -> None:
    assert forbidden_for_other_reason(body) is other
