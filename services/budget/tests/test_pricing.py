"""Price lookup and cost arithmetic (aigw_common.pricing), and the seeded price list."""

from __future__ import annotations

import asyncpg

from aigw_budget.recorder import PriceBook
from aigw_common.pricing import PriceTable, cost_micros, reservation_micros
from aigw_common.schemas import ModelPrice, TokenCounts


def p(model: str, i: int = 1, o: int = 2, cr: int = 3, cw: int = 4) -> ModelPrice:
    return ModelPrice(model=model, input_per_mtok_micros=i, output_per_mtok_micros=o, cache_read_per_mtok_micros=cr,
                      cache_write_per_mtok_micros=cw)


def test_lookup_rules() -> None:
    t = PriceTable([p("gpt-4o"), p("gpt-4o-mini"), p("claude-sonnet-4"), p("claude-haiku-4-5"), p("gpt-4.1")])
    assert t.lookup("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"  # type: ignore[union-attr]
    assert t.lookup("gpt-4o-2024-08-06").model == "gpt-4o"  # type: ignore[union-attr]
    assert t.lookup("claude-sonnet-4-20250514").model == "claude-sonnet-4"  # type: ignore[union-attr]
    assert t.lookup("claude-haiku-4.5").model == "claude-haiku-4-5"  # type: ignore[union-attr]
    assert t.lookup("us.anthropic.claude-sonnet-4-20250514-v1:0").model == "claude-sonnet-4"  # type: ignore[union-attr]
    assert t.lookup("gpt-4.1-2025-04-14").model == "gpt-4.1"  # type: ignore[union-attr]
    assert t.lookup("gpt-4o2") is None  # a prefix must end at a dash
    assert t.lookup("mystery") is None
    assert PriceTable([p("*", 9)]).lookup("mystery").input_per_mtok_micros == 9  # type: ignore[union-attr]


def test_cost_and_reservation() -> None:
    price = p("m", i=3_000_000, o=15_000_000, cr=300_000, cw=3_750_000)
    tok = TokenCounts(input_tokens=1000, output_tokens=100, cache_read_tokens=10_000, cache_write_tokens=1000,
                      reasoning_tokens=50)
    assert cost_micros(tok, price) == 3000 + 1500 + 3000 + 3750
    assert cost_micros(TokenCounts(input_tokens=1), p("m", i=1)) == 1  # rounded up, never down
    assert cost_micros(tok, None) == 0
    # every input byte as a token at the dearer input price, plus the output cap
    assert reservation_micros(price, 2000, 100) == (2000 * 3_750_000 + 100 * 15_000_000) // 1_000_000
    assert reservation_micros(price, 0, None) == 4096 * 15
    assert reservation_micros(None, 10, 10) == 0


async def test_seeded_prices_cover_common_models(pool: asyncpg.Pool) -> None:
    table = await PriceBook().load(pool)
    for model in ("gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "gpt-5", "o3-mini", "claude-sonnet-4-0",
                  "claude-3-5-haiku-20241022", "claude-opus-4-1-20250805", "claude-haiku-4.5"):
        assert table.lookup(model) is not None, model
    sonnet = table.lookup("claude-sonnet-4-20250514")
    assert sonnet is not None and (sonnet.input_per_mtok_micros, sonnet.output_per_mtok_micros,
                                   sonnet.cache_read_per_mtok_micros, sonnet.cache_write_per_mtok_micros) == (
        3_000_000, 15_000_000, 300_000, 3_750_000)
