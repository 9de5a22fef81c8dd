"""The wire form of usage on ``AIGW_USAGE``: single events, or one :class:`~aigw_common.schemas.UsageRecord`
per request. Every reader of the stream (the budget consumer, tests' collectors) decodes it here."""

from __future__ import annotations

import msgspec

from .bus import decode
from .schemas import AnyUsageEvent, AnyUsageMessage, UsageRecord


def usage_events(data: bytes) -> list[AnyUsageEvent]:
    """The events one usage message carries; raises DecodeError for anything else (poison)."""
    msg = decode(data, AnyUsageMessage)
    return list(msg.events) if isinstance(msg, UsageRecord) else [msg]


def record_payload(record_id: str, encoded: list[bytes]) -> bytes:
    """A UsageRecord's JSON from events already encoded (each was sized on its own): no second encode."""
    head = b'{"kind":"usage.record","v":1,"record_id":' + msgspec.json.encode(record_id) + b',"events":['
    return head + b",".join(encoded) + b"]}"
