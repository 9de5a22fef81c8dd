"""Providers' rate-limit headers (aigw_common.llm.ratelimit)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from aigw_common.llm.ratelimit import parse_ratelimit

NOW = 1_700_000_000.0


def test_openai_ratelimit_headers():
    h = CIMultiDict({"X-RateLimit-Remaining-Requests": "0", "x-ratelimit-reset-requests": "6m0s",
                     "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "20ms"})
    rl = parse_ratelimit(h, NOW)
    assert rl.remaining_requests == 0 and rl.reset_requests_at == NOW + 360
    assert rl.remaining_tokens == 149984 and rl.reset_tokens_at == pytest.approx(NOW + 0.02)


def test_anthropic_ratelimit_headers_take_the_tightest_token_budget():
    h = CIMultiDict({
        "anthropic-ratelimit-requests-remaining": "49", "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z",
        "anthropic-ratelimit-tokens-remaining": "9000", "anthropic-ratelimit-tokens-reset": "2023-11-14T22:14:00Z",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:40Z",
    })
    rl = parse_ratelimit(h, NOW)
    assert rl.remaining_requests == 49 and rl.reset_requests_at == 1700000010.0
    assert rl.remaining_tokens == 0 and rl.reset_tokens_at == 1700000020.0


def test_no_or_garbled_ratelimit_headers():
    assert parse_ratelimit(CIMultiDict({"content-type": "application/json"}), NOW) is None
    rl = parse_ratelimit(CIMultiDict({"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "soon"}), NOW)
    assert rl.remaining_requests is None and rl.reset_requests_at is None
