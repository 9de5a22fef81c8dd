"""Retry-After, parsed once for every service: ``retry-after-ms``, then ``Retry-After`` (RFC 9110 §10.2.3).

``Retry-After`` is either delta-seconds (digits) or an HTTP-date. Anything else
— ``nan``, ``inf``, a negative number, an exponent, a date that does not parse,
or a wait longer than ``absurd`` — says nothing usable, and the caller falls
back to its own default. A date in the past means "now" (0).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

ABSURD = 400 * 86400.0  # beyond a year (a budget period ends within a month): a broken header, not advice
_NUMBER = re.compile(r"\s*\d{1,15}(\.\d{1,9})?\s*")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None:
        for k, val in headers.items():
            if k.lower() == name:
                return val
    return v


def _number(raw: str) -> float | None:
    if not _NUMBER.fullmatch(raw):
        return None
    v = float(raw)
    return v if math.isfinite(v) else None


def retry_after(headers: Mapping[str, str] | None, *, now: float | None = None, absurd: float = ABSURD) -> float | None:
    """Seconds the server asks the client to wait, or None when it says nothing usable."""
    if not headers:
        return None
    if (ms := _header(headers, "retry-after-ms")) is not None and (v := _number(ms)) is not None \
            and v / 1000.0 <= absurd:
        return v / 1000.0
    ra = _header(headers, "retry-after")
    if ra is None:
        return None
    if (v := _number(ra)) is not None:
        return v if v <= absurd else None
    try:
        dt = email.utils.parsedate_to_datetime(ra.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not an HTTP-date
        return None
    secs = max(0.0, dt.timestamp() - (time.time() if now is None else now))
    return secs if secs <= absurd else None


__all__ = ["ABSURD", "retry_after"]
