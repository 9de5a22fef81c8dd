"""Every control-plane service documents every route it serves, and schemathesis finds no 5xx in any of them.

The registry's own schemathesis run lives in services/registry/tests/test_openapi.py; here budget, keypool
and chatd are fuzzed against the whole running stack (with data in it, so reads return real bodies), and
the router of all four is compared with its document.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from aigw_testing.system import System

pytestmark = pytest.mark.reliability
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
DOCS = {"registry": "/api/v2/openapi.json", "budget": "/api/v2/openapi.json", "keypool": "/api/v2/openapi.json",
        "chatd": "/api/experimental/openapi.json"}
UNDOCUMENTED = {"/healthz", "/readyz", "/metrics"}


def _served(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or path in UNDOCUMENTED:
            continue
        out.add((route.method, path))
    return out


async def test_every_route_is_documented_and_schemathesis_finds_no_5xx(start_system, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        reliability) -> None:
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"))
    owner = s.api(s.owner_token)
    for svc, doc_path in DOCS.items():
        doc = await owner.ok("GET", s.url(svc, doc_path))
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        served = _served(s.app[svc])
        assert served == documented, f"{svc}: served but undocumented {served - documented}, " \
                                     f"documented but not served {documented - served}"
    # data for the fuzzer to read: a recorded interception, a budget, a model config, a chat, a skill
    m = await s.member("fuzzed")
    r = await s.openai(m.token).chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    await owner.ok("PUT", s.url("budget", f"/api/v2/users/{m.id}/ai/budget"), {"spend_limit_micros": 10**9})
    mc = await owner.ok("POST", s.url("chatd", "/api/experimental/chats/model-configs"),
                        {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"})
    await owner.ok("POST", s.url("chatd", "/api/experimental/chats"), {"model_config_id": mc["id"]})
    await owner.ok("POST", s.url("chatd", "/api/experimental/users/me/skills"), {"name": "terse", "content": "Be brief."})
    await s.ledger(expect=1)

    st = Path(sys.executable).parent / "schemathesis"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}, "NO_COLOR": "1"}
    for svc in ("budget", "keypool", "chatd"):
        # an SSE stream never ends by itself; its auth and 404s are covered by the RBAC tests
        skip = ["--exclude-operation-id", "get_chats_chat_stream"] if svc == "chatd" else []
        proc = await asyncio.create_subprocess_exec(
            str(st), "run", s.url(svc, DOCS[svc]), "--checks", CHECKS, "--max-examples", "3",
            "--phases", "examples,coverage,fuzzing", "--header", f"Authorization: Bearer {s.owner_token}",
            "--workers", "1", "--seed", "1", "--no-shrink", "--request-timeout", "10",
            "--suppress-health-check", "all", *skip,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path, env=env)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, f"{svc}:\n{text[-6000:]}"
    # the fuzzing changed nothing it should not: the owner's token still works everywhere
    assert (await owner.call("GET", s.url("budget", "/api/v2/ai/prices"))).status == 200
    reliability.record("schemathesis on every OpenAPI document",
                       client="no 5xx; every status, content type and body as documented",
                       usage="—", measured="budget, keypool, chatd here (registry in its own tests); "
                                           "router = document for all four")
