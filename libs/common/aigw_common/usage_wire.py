"""The wire form of usage on ``AIGW_USAGE``: single events, or :class:`~aigw_common.schemas.UsageRecord`
messages holding the events of one or more requests. Every reader of the stream (the budget consumer, tests'
collectors) decodes it here."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .bus import decode
from .schemas import AnyUsageEvent, AnyUsageMessage, UsageEvent, UsageRecord

_encoder = msgspec.json.Encoder()
_HEAD = b'{"kind":"usage.record","v":1,"record_id":'
_MID = b',"events":['
_TAIL = b"]}"


def usage_events(data: bytes) -> list[AnyUsageEvent]:
    """The events one usage message carries; raises DecodeError for anything else (poison)."""
    msg = decode(data, AnyUsageMessage)
    return list(msg.events) if isinstance(msg, UsageRecord) else [msg]


def record_payload(record_id: str, encoded: list[bytes]) -> bytes:
    """A UsageRecord's JSON from events already encoded (each was sized on its own): no second encode.

    An item of ``encoded`` may hold several events already joined by commas (:func:`events_fragment`)."""
    return _HEAD + msgspec.json.encode(record_id) + _MID + b",".join(encoded) + _TAIL


def events_fragment(events: Sequence[UsageEvent]) -> bytes:
    """``events`` encoded as they sit inside a record (``a,b,c``): one encoder call for a request's events,
    the same bytes as encoding each and joining them."""
    return _encoder.encode(events)[1:-1]


def record_size(record_id: str, fragment_bytes: int, fragments: int) -> int:
    """The length of :func:`record_payload` for ``fragments`` items of ``fragment_bytes`` in total, without
    building it (a publisher sizes a record before it joins the parts)."""
    return (len(_HEAD) + len(msgspec.json.encode(record_id)) + len(_MID) + fragment_bytes + max(0, fragments - 1)
            + len(_TAIL))
