"""The one Retry-After parser (gateway key cooldowns, chatd retries)."""

from __future__ import annotations

import email.utils

import pytest
from multidict import CIMultiDict

from aigw_common.retry_after import ABSURD, retry_after

NOW = 1_800_000_000.0


def date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def test_seconds_and_milliseconds() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"retry-after": " 7 "}) == 7.0
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25  # the finer one wins
    assert retry_after(CIMultiDict({"RETRY-AFTER": "4"})) == 4.0
    assert retry_after({"Retry-After": "0"}) == 0.0


def test_http_date_form() -> None:
    assert retry_after({"Retry-After": date(NOW + 120)}, now=NOW) == pytest.approx(120.0)
    assert retry_after({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, now=NOW) == 0.0  # past: retry now
    assert retry_after({"Retry-After": date(NOW + 30).replace("GMT", "+0000")}, now=NOW) == pytest.approx(30.0)
    # not an HTTP-date: no zone, garbage, out-of-range fields
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00"}, now=NOW) is None
    assert retry_after({"Retry-After": "tomorrow"}, now=NOW) is None
    assert retry_after({"Retry-After": "Wed, 99 Foo 2015 77:28:00 GMT"}, now=NOW) is None
    assert retry_after({"Retry-After": date(NOW + ABSURD + 10)}, now=NOW) is None


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0.5", "1e3", "0x10", "", "  ",
                                 "12abc", "999999999999", "9" * 40])
def test_unusable_values_say_nothing(bad: str) -> None:
    assert retry_after({"Retry-After": bad}) is None
    assert retry_after({"retry-after-ms": bad}) is None
    # an unusable retry-after-ms does not hide a good Retry-After
    assert retry_after({"retry-after-ms": bad, "Retry-After": "5"}) == 5.0


def test_absurd_boundary() -> None:
    assert retry_after({"Retry-After": str(int(ABSURD))}) == ABSURD
    assert retry_after({"Retry-After": str(int(ABSURD) + 1)}) is None


def test_absent() -> None:
    assert retry_after(None) is None and retry_after({}) is None and retry_after({"X-Other": "1"}) is None
