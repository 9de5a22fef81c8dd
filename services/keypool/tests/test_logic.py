"""Key-state rules without a broker."""

from aigw_common.keystate import is_failure
from aigw_common.schemas import (
    KeyMarked,
    KeyStat,
    KeyState,
    ProviderConfig,
    RateLimitInfo,
    RegistrySnapshot,
    SealedKey,
)
from aigw_keypool.logic import (
    KeyStats,
    Stats,
    budget_exhausted_until,
    changed_keys,
    expire,
    merge_mark,
)

NOW = 1_000_000.0


def mark(state, until=None, status=429, at=NOW, **kw):
    return KeyMarked(event_id="e", provider_id="p", key_id="k", state=state, until=until, status_code=status, at=at, **kw)


def cooling(until):
    return KeyState(provider_id="p", key_id="k", state="cooling", until=until, status_code=429)


def test_longest_cooldown_wins_in_any_order():
    marks = [mark("cooling", NOW + d) for d in (5, 30, 10)]
    for order in (marks, marks[::-1]):
        cur = None
        for m in order:
            cur = merge_mark(cur, m, NOW) or cur
        assert cur.state == "cooling" and cur.until == NOW + 30


def test_revoke_is_absorbing():
    revoked = merge_mark(cooling(NOW + 5), mark("revoked", status=401), NOW)
    assert revoked.state == "revoked" and revoked.status_code == 401
    assert merge_mark(revoked, mark("cooling", NOW + 100), NOW) is None
    assert merge_mark(revoked, mark("revoked"), NOW) is None
    assert merge_mark(revoked, mark("valid", status=200), NOW) is None


def test_stale_and_default_cooldowns():
    assert merge_mark(None, mark("cooling", NOW - 1), NOW) is None
    st = merge_mark(None, mark("cooling", None, at=NOW), NOW)
    assert st.until == NOW + 60  # contract default without Retry-After


def test_expire():
    assert expire(cooling(NOW + 1), NOW) is None
    assert expire(cooling(NOW - 1), NOW).state == "valid"
    assert expire(None, NOW) is None


def test_budget_at_zero_cools_until_reset():
    assert budget_exhausted_until(None, NOW) is None
    assert budget_exhausted_until(RateLimitInfo(remaining_requests=3, reset_requests_at=NOW + 9), NOW) is None
    rl = RateLimitInfo(remaining_requests=0, reset_requests_at=NOW + 2, remaining_tokens=0, reset_tokens_at=NOW + 7)
    assert budget_exhausted_until(rl, NOW) == NOW + 7
    assert budget_exhausted_until(RateLimitInfo(remaining_tokens=0, reset_tokens_at=NOW - 1), NOW) is None
    assert budget_exhausted_until(RateLimitInfo(remaining_requests=0), NOW) == NOW + 1.0


def test_failure_classes():
    assert [s for s in (0, 200, 400, 401, 403, 404, 429, 500, 503) if is_failure(s)] == [0, 401, 403, 429, 500, 503]


def test_stats_window_keeps_one_minute(monkeypatch):
    import aigw_keypool.logic as logic

    monkeypatch.setattr(logic.time, "time", lambda: NOW)
    s = KeyStats()
    s.add(NOW - 90, 5, 5)  # too old
    s.add(NOW - 30, 2, 1)
    s.add(NOW - 45, 1, 0)  # late report
    s.add(NOW, 3, 0)
    assert s.last_minute(NOW) == (6, 1)
    assert s.last_minute(NOW + 31) == (3, 0)


def test_stats_last_status_is_latest():
    st = Stats()
    st.report(NOW, KeyStat(provider_id="p", key_id="k", successes=1, last_status=200))
    st.mark(mark("cooling", NOW + 5, status=429, at=NOW - 1))  # older than the report
    assert st.get("p", "k").last_status == 200
    st.mark(mark("revoked", status=401, at=NOW + 1))
    assert st.get("p", "k").last_status == 401


def snap(*providers):
    return RegistrySnapshot(revision=1, providers=[
        ProviderConfig(id=pid, name=pid, type="openai", display_name=pid, base_url=url,
                       keys=[SealedKey(id=kid, position=i, hint=hint, sealed="x") for i, (kid, hint) in enumerate(keys)])
        for pid, url, keys in providers])


def test_changed_keys():
    old = snap(("p", "http://a", [("k1", "sk…1111"), ("k2", "sk…2222")]))
    assert changed_keys(None, old) == set()
    assert changed_keys(old, old) == set()
    new = snap(("p", "http://a", [("k1", "sk…1111"), ("k2", "sk…9999"), ("k3", "sk…3333")]),
               ("q", "http://b", [("k9", "sk…0000")]))
    assert changed_keys(old, new) == {"p.k2", "p.k3", "q.k9"}
    moved = snap(("p", "http://other", [("k1", "sk…1111"), ("k2", "sk…2222")]))
    assert changed_keys(old, moved) == {"p.k1", "p.k2"}
