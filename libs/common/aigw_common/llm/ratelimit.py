"""Providers' rate-limit headers: how much a key has left, as its response said.

OpenAI (and OpenAI-compatible servers, Azure): ``x-ratelimit-remaining-requests`` /
``-tokens`` with resets as durations from now (``1s``, ``6m0s``, ``20ms``). Anthropic:
``anthropic-ratelimit-requests-*`` and the ``tokens`` / ``input-tokens`` / ``output-tokens``
budgets (the tightest one counts) with RFC 3339 reset times. Unparsable values count as absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from ..durations import parse_duration
from ..schemas import RateLimitInfo

_OPENAI = ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
_ANTHROPIC_REQUESTS = ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset")
_ANTHROPIC_TOKENS = tuple((f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset")
                          for kind in ("tokens", "input-tokens", "output-tokens"))


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v.strip())
    except ValueError:
        return None


def _in(v: str | None, now: float) -> float | None:
    """OpenAI's reset: a duration from now (``1s``, ``6m0s``, ``20ms``)."""
    if v is None:
        return None
    try:
        return now + parse_duration(v)
    except ValueError:
        return None


def _at(v: str | None) -> float | None:
    """Anthropic's reset: an RFC 3339 time."""
    if v is None:
        return None
    try:
        return datetime.fromisoformat(v.strip()).timestamp()
    except ValueError:
        return None


def parse_ratelimit(headers: Mapping[str, str], now: float) -> RateLimitInfo | None:
    """The key's remaining budget from an upstream response's headers (a case-insensitive mapping)."""
    remaining = headers.get(_OPENAI[0])
    if remaining is not None or headers.get(_OPENAI[2]) is not None:
        return RateLimitInfo(
            remaining_requests=_int(remaining), reset_requests_at=_in(headers.get(_OPENAI[1]), now),
            remaining_tokens=_int(headers.get(_OPENAI[2])), reset_tokens_at=_in(headers.get(_OPENAI[3]), now),
        )
    tokens: tuple[int, float | None] | None = None
    for rem_h, reset_h in _ANTHROPIC_TOKENS:  # the tightest of the token budgets
        n = _int(headers.get(rem_h))
        if n is not None and (tokens is None or n < tokens[0]):
            tokens = (n, _at(headers.get(reset_h)))
    requests = _int(headers.get(_ANTHROPIC_REQUESTS[0]))
    if requests is None and tokens is None:
        return None
    return RateLimitInfo(
        remaining_requests=requests, reset_requests_at=_at(headers.get(_ANTHROPIC_REQUESTS[1])),
        remaining_tokens=tokens[0] if tokens else None, reset_tokens_at=tokens[1] if tokens else None,
    )
