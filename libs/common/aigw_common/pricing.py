"""Model prices and cost arithmetic, shared by the budget service (recorded cost) and the gateway (reservations).

Both sides must agree to the micro on how a model name maps to a price and how
tokens become micro-USD, or reservations and recorded costs drift apart; so the
rules live here once:

- lookup: exact model name; else both sides normalised (lower case, a
  Bedrock/router prefix such as ``us.anthropic.`` or ``openai/`` and a
  ``-v1:0``-style suffix removed, dots as dashes, so ``claude-haiku-4.5`` is
  ``claude-haiku-4-5``); else the longest priced name that is a prefix of it
  followed by ``-`` (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``,
  ``claude-sonnet-4-0`` → ``claude-sonnet-4``); else the ``*`` row when an
  admin set one; else no price (cost 0, recorded as unpriced).
- cost: ``ceil(Σ tokens * price-per-Mtok / 1e6)`` micro-USD, cache reads and
  writes at their own prices; reasoning tokens are part of output tokens and
  are not charged twice.
- reservation: an upper bound of the cost: every input byte counted as one
  token at the dearer of the input and cache-write prices, plus the request's
  output cap (or ``DEFAULT_OUTPUT_TOKENS``) at the output price.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .schemas import ModelPrice, TokenCounts

FALLBACK_MODEL = "*"
DEFAULT_OUTPUT_TOKENS = 4096  # assumed output cap when the request sets none (OpenAI makes it optional)

_PREFIX = re.compile(r"^(?:[a-z]{2}\.)?(?:anthropic|openai|azure|bedrock)[./]")
_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")


def normalize(model: str) -> str:
    m = model.strip().lower()
    m = _PREFIX.sub("", m)
    return _SUFFIX.sub("", m).replace(".", "-")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_micros(tokens: TokenCounts, price: ModelPrice | None) -> int:
    if price is None:
        return 0
    total = (
        tokens.input_tokens * price.input_per_mtok_micros
        + tokens.output_tokens * price.output_per_mtok_micros
        + tokens.cache_read_tokens * price.cache_read_per_mtok_micros
        + tokens.cache_write_tokens * price.cache_write_per_mtok_micros
    )
    return _ceil_div(max(total, 0), 1_000_000)


def reservation_micros(price: ModelPrice | None, input_bytes: int, max_output_tokens: int | None) -> int:
    """An upper bound of what a request can cost (tokens never outnumber input bytes)."""
    if price is None:
        return 0
    out = max_output_tokens if max_output_tokens and max_output_tokens > 0 else DEFAULT_OUTPUT_TOKENS
    per_in = max(price.input_per_mtok_micros, price.cache_write_per_mtok_micros)
    return _ceil_div(max(input_bytes, 0) * per_in + out * price.output_per_mtok_micros, 1_000_000)


class PriceTable:
    """An immutable price table with the lookup rules above; lookups are memoised."""

    __slots__ = ("_by_model", "_cache", "_exact", "_names", "prices")

    def __init__(self, prices: Iterable[ModelPrice] = ()) -> None:
        self.prices: tuple[ModelPrice, ...] = tuple(prices)
        self._exact = {p.model.strip().lower(): p for p in self.prices}
        self._by_model = {normalize(p.model): p for p in self.prices if p.model != FALLBACK_MODEL}
        # longest first, so the first prefix hit is the most specific
        self._names = sorted(self._by_model, key=len, reverse=True)
        self._cache: dict[str, ModelPrice | None] = {}

    def __len__(self) -> int:
        return len(self.prices)

    def lookup(self, model: str) -> ModelPrice | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._find(model)
        if len(self._cache) < 10_000:
            self._cache[model] = found
        return found

    def _find(self, model: str) -> ModelPrice | None:
        raw = model.strip().lower()
        if (p := self._exact.get(raw)) is not None:
            return p
        name = normalize(model)
        if (p := self._by_model.get(name)) is not None:
            return p
        for cand in self._names:
            if name.startswith(cand) and name[len(cand) : len(cand) + 1] == "-":
                return self._by_model[cand]
        return self._exact.get(FALLBACK_MODEL)


__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "FALLBACK_MODEL",
    "PriceTable",
    "cost_micros",
    "normalize",
    "reservation_micros",
]
