"""Tokens: compared without timing leaks, and revoked everywhere within a second.

Constant time is checked by reading the code, not by timing it (timing on a shared 2-core box proves
nothing): a token is only ever looked up by its SHA-256 digest, the one comparison of digests uses
``hmac.compare_digest``, and no module compares a token-bearing value with ``==``/``in``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
import time
from pathlib import Path

import openai
import pytest

from aigw_common import auth
from aigw_testing.system import System

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = ("token", "token_hash", "bearer", "secret", "api_key", "credential", "aigw_token")


def _calls(fn: object) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))  # type: ignore[arg-type]
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    return ""


def test_tokens_are_compared_in_constant_time(reliability) -> None:  # type: ignore[no-untyped-def]
    from aigw_registry import identity, responders

    # the comparison primitive
    assert "compare_digest" in _calls(auth.same_token)
    # the registry checks a presented token by its digest, and compares digests with same_token
    for fn in (identity.authenticate, responders.verify_token):
        calls = _calls(fn)
        assert "same_token" in calls, f"{fn.__qualname__} does not compare with same_token"
    assert "hash_token" in _calls(identity.authenticate)
    # every other service looks tokens up in the identity cache by digest (a dict of SHA-256 hex strings)
    for method in (auth.IdentityCache.verify, auth.IdentityCache.cached):
        assert "hash_token" in _calls(method), method.__qualname__
    # and nowhere is a token-bearing value compared with ==, != or in
    offenders = []
    files = [*ROOT.glob("services/*/aigw_*/**/*.py"), *ROOT.glob("libs/common/aigw_common/**/*.py")]
    assert len(files) > 40
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            for side in (node.left, *node.comparators):
                name = _name(side).lower()
                if name in SECRET_NAMES or name.endswith(("_token", "_secret", "token_hash")):
                    offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "token-bearing values compared with ==/in (use aigw_common.auth.same_token):\n" + \
        "\n".join(offenders)
    reliability.record("Token comparison", client="—", usage="—",
                       measured=f"by inspection of {len(files)} modules: lookups by SHA-256 digest, digests compared "
                                "with hmac.compare_digest, no ==/in on a token value")


async def test_revoked_token_stops_working_on_every_gateway_within_one_second(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway"))
    await s.start_service("gateway", key="gateway2")
    gateways = ("gateway", "gateway2")
    results = {}
    for what in ("token deleted", "user deleted"):
        m = await s.member("rev" + what.split()[0])
        clients = [s.openai(m.token, gateway=g) for g in gateways]
        for c in clients:  # both gateways know (and cache) the token
            assert (await c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
                    ).choices[0].message.content
        path = f"/api/v2/users/{m.id}/tokens/{m.token_id}" if what == "token deleted" else f"/api/v2/users/{m.id}"
        await s.owner.ok("DELETE", s.url("registry", path))
        t0 = time.monotonic()

        async def refused(c: openai.AsyncOpenAI, t0: float = t0) -> float:
            while True:
                try:
                    await c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
                except openai.AuthenticationError:
                    return time.monotonic() - t0
                assert time.monotonic() - t0 < 5, "the revoked token still works after 5 s"
                await asyncio.sleep(0.02)

        took = await asyncio.gather(*(refused(c) for c in clients))
        assert max(took) <= 1.0, f"{what}: refused after {took} s (contract: within 1 s on every gateway)"
        results[what] = max(took)
    reliability.record("Revoked token on two gateways",
                       client="401 (openai SDK: AuthenticationError) on both gateways once revoked",
                       usage="—", measured=", ".join(f"{k}: refused everywhere {v * 1000:.0f} ms after the API "
                                                      "answered" for k, v in results.items()))
