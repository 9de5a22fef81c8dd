"""The console's small parts: the session cookie, the caches' bounds, the sign-in limiter, URL building."""

from __future__ import annotations

from types import SimpleNamespace

from yarl import URL

from aigw_console.proxy import upstream_url
from aigw_console.session import COOKIE, Me, Session, SignInLimiter, WhoCache, read_session


def _req(cookie: str) -> SimpleNamespace:
    return SimpleNamespace(cookies={COOKIE: cookie})


def test_session_cookie_round_trip_and_expiry() -> None:
    s = Session("aigw_tok-123", 1_000)
    got = read_session(_req(s.cookie_value()), ttl=100, now=1_050)  # type: ignore[arg-type]
    assert got == s and got.csrf == s.csrf
    assert read_session(_req(s.cookie_value()), ttl=100, now=1_101) is None  # too old
    assert read_session(_req(s.cookie_value()), ttl=100, now=900) is None  # from the future
    for bad in ("", "v1", "v2.1000.tok", "v1.x.tok", "v1.1000.", "v1.1000.a b", "v1.1000." + "a" * 600,
                "v1.1000.tok\x00"):
        assert read_session(_req(bad), ttl=100, now=1_050) is None, bad  # type: ignore[arg-type]


def test_csrf_token_depends_on_the_session() -> None:
    a, b, c = Session("tok-a", 1), Session("tok-b", 1), Session("tok-a", 2)
    assert len({a.csrf, b.csrf, c.csrf}) == 3 and "tok-a" not in a.csrf


def test_who_cache_is_bounded_and_expires() -> None:
    cache = WhoCache(ttl=60, max_entries=3)
    me = Me("u", "alice", ("member",), ())
    for i in range(10):
        cache.put(f"t{i}", me)
    assert len(cache) == 3 and cache.get("t0") is None and cache.get("t9") == me
    cache.drop("t9")
    assert cache.get("t9") is None
    short = WhoCache(ttl=-1)
    short.put("t", me)
    assert short.get("t") is None


def test_sign_in_limiter() -> None:
    lim = SignInLimiter(max_failures=3, window=60, max_entries=2)
    for _ in range(3):
        assert lim.retry_after("1.2.3.4", now=0) == 0
        lim.failed("1.2.3.4", now=0)
    assert lim.retry_after("1.2.3.4", now=1) == 59
    assert lim.retry_after("5.6.7.8", now=1) == 0  # per address
    assert lim.retry_after("1.2.3.4", now=61) == 0  # the window passed
    lim.failed("a", now=0), lim.failed("b", now=0), lim.failed("c", now=0)
    assert len(lim._entries) == 2  # bounded
    lim.succeeded("c")
    assert "c" not in lim._entries


def test_upstream_url_is_built_not_concatenated() -> None:
    req = URL("/api/v2/ai/usage?group_by=day&from=2026-01-01T00:00:00Z&x=a%26b")
    u = upstream_url(URL("http://budget:8083"), ["api", "v2", "ai", "usage"], req)
    assert str(u.with_query(None)) == "http://budget:8083/api/v2/ai/usage"
    assert u.query["x"] == "a&b" and u.query["from"] == "2026-01-01T00:00:00Z"
    behind = upstream_url(URL("https://internal.example/registry/"), ["api", "v2", "users"], URL("/x"))
    assert str(behind) == "https://internal.example/registry/api/v2/users"
