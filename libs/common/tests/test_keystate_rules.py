"""The key-state rules keypool and every gateway share (aigw_common.keystate)."""

from __future__ import annotations

import pytest

from aigw_common.keystate import cooled_until, is_failure
from aigw_common.schemas import KeyStateName


@pytest.mark.parametrize(("state", "until", "new", "want"), [
    ("valid", None, 100.0, 100.0),
    ("valid", 500.0, 100.0, 100.0),  # a stale until of a valid key counts for nothing
    ("cooling", 50.0, 100.0, 100.0),  # longer wins
    ("cooling", 200.0, 100.0, None),  # shorter changes nothing
    ("cooling", 100.0, 100.0, None),
    ("cooling", None, 100.0, 100.0),
    ("revoked", None, 100.0, None),  # only a re-check revives a revoked key
])
def test_cooled_until(state: KeyStateName, until: float | None, new: float, want: float | None) -> None:
    assert cooled_until(state, until, new) == want


def test_is_failure() -> None:
    assert [s for s in (0, 200, 400, 401, 403, 404, 429, 500, 529) if is_failure(s)] == [0, 401, 403, 429, 500, 529]
