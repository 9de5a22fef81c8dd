"""The console in a real browser (Debian's Chromium driven by Playwright) against the real services.

Owner: sign in, create a provider on the mock upstream, add a key, create a group with a budget, send a
request through the gateway with the ``openai`` SDK, watch the budget bar move and the request show in
Traffic with its tokens and cost, revoke a key at the mock (401) and watch it turn revoked live, reset it,
export usage as CSV. Member: every page, and every JSON document those pages load, holds nothing of
another user. Screenshots of each page go to ``test-artifacts/console/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aigw_testing.system import System
from aigw_testing.wait import eventually

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("AIGW_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
PAGES = ("providers", "people", "budgets", "usage", "traffic", "audit")
WAIT = 30_000  # ms: generous, the machine is shared

K1 = "zzconsole-key-one-5Tq8Wm2Lx"
K2 = "zzconsole-key-two-9Rb4Nc7Vy"

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `make test` installs the `browser` dependency group")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package as root "
                    "(apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


def _no_script_errors(page: Any) -> list[str]:
    """Uncaught exceptions of the page's script, collected for the end of the test."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _sign_in(page: Any, console: str, token: str) -> None:
    from playwright.async_api import expect

    await page.goto(console + "/")
    await expect(page.locator("input[name=token]")).to_have_count(1)
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/providers$"), timeout=WAIT)


async def _admin_token(s: System, user_id: str) -> tuple[str, str]:
    """A token the console accepts: admin scope where the registry knows scopes, a plain one before that."""
    url = s.url("registry", f"/api/v2/users/{user_id}/tokens")
    r = await s.owner.call("POST", url, {"name": "console", "scope": "admin"})
    if r.status == 400:
        r = await s.owner.call("POST", url, {"name": "console"})
    assert r.status == 201, r
    return r.body["token"], r.body["id"]


def _money(micros: int) -> float:
    return micros / 1e6


async def test_owner_runs_the_gateway_from_the_console(console_system: System, browser: Any) -> None:
    from playwright.async_api import expect

    s = console_system
    console = s.urls["console"]
    upstream = s.up.rewrite(s.upstream.url) + "/v1"
    ctx = await browser.new_context(accept_downloads=True)
    page = await ctx.new_page()
    page.set_default_timeout(WAIT)
    script_errors = _no_script_errors(page)
    await _sign_in(page, console, s.owner_token)
    await expect(page.locator('tr[data-provider="openai"]')).to_have_count(1)  # seeded from the env

    # -- a provider on the mock upstream, with a first key, then a second one
    await page.fill("input[name=name]", "mockai")
    await page.select_option("select[name=type]", "openai")
    await page.fill("input[name=base_url]", upstream)
    await page.select_option("select[name=type]", "azure")  # the form asks for the type's own settings
    await expect(page.locator("input[name=s_api_version]")).to_be_visible()
    await page.select_option("select[name=type]", "openai")
    await expect(page.locator("input[name=s_api_version]")).to_have_count(0)
    await page.fill("input[name=display_name]", "Mock AI")
    await page.fill("form:has(input[name=name]) input[name=api_key]", K1)
    await page.click("text=Create provider")
    detail = page.locator('section[data-detail="mockai"]')
    await expect(detail).to_be_visible()
    await detail.locator("input[name=api_key]").fill(K2)
    await detail.locator("text=Add key").click()
    keys = detail.locator("tr[data-key-id]")
    await expect(keys).to_have_count(2)
    prov = await s.owner.ok("GET", s.url("registry", "/api/v2/ai/providers/mockai"))
    k1, k2 = (k["id"] for k in sorted(prov["keys"], key=lambda k: k["position"]))
    await expect(detail.locator(f'tr[data-key-id="{k1}"]')).to_have_attribute("data-state", "valid")
    await expect(detail.locator(f'tr[data-key-id="{k2}"]')).to_have_attribute("data-state", "valid")
    assert K1 not in await page.content() and K2 not in await page.content(), "key values are write-only"
    await _shot(page, "providers")

    # -- a group with the owner in it, and a budget for the group
    me = await s.owner.ok("GET", s.url("registry", "/api/v2/users/me"))
    await page.goto(console + "/people")
    await page.fill("form:has(button:text('Create group')) input[name=name]", "team")
    await page.click("text=Create group")
    group = page.locator('section[data-detail="team"]')
    await group.locator("input[name=user]").fill(me["username"])
    await group.locator("button:text('Add')").click()
    await expect(group.locator("td", has_text=me["username"])).to_have_count(1)
    await _shot(page, "people")

    # -- a token, shown once; a BYOK key, shown as a hint only
    await page.goto(f"{console}/people?user={me['id']}")
    panel = page.locator(f'section[data-detail="{me["username"]}"]')
    await panel.locator("form:has(button:text('Create token')) input[name=name]").fill("from-console")
    await panel.locator("select[name=scope]").select_option("admin")
    await panel.locator("button:text('Create token')").click()
    shown = panel.locator("[data-new-token]")
    await expect(shown).to_be_visible()
    new_token = (await shown.inner_text()).strip()
    assert (await s.api(new_token).call("GET", s.url("registry", "/api/v2/users/me"))).status == 200
    byok = "zzowner-own-key-2Gm7Pq4Tz"
    store = panel.locator("form:has(button:text('Store key'))")
    if await store.locator("select[name=provider]").count():  # the BYOK providers, where the registry lists them
        await store.locator("select[name=provider]").select_option("openai")
    else:
        await store.locator("input[name=provider]").fill("openai")
    await store.locator("input[name=api_key]").fill(byok)
    await panel.locator("button:text('Store key')").click()
    await expect(page.locator('tr[data-byok="openai"]')).to_have_count(1)
    await page.reload()
    await expect(page.locator('tr[data-token-id]')).not_to_have_count(0)
    html = await page.content()
    assert new_token not in html and byok not in html, "a token and a key are shown once / never"

    await page.goto(console + "/budgets")
    row = page.locator('tr[data-budget="group:team"]')
    await expect(row).to_contain_text("No budget")
    await row.locator("input[name=usd]").fill("5")
    await row.locator("button:text('Set')").click()
    await expect(row).to_have_attribute("data-limit", "5000000")
    await expect(row).to_have_attribute("data-spent", "0")

    # -- one request through the gateway with the openai SDK; the bar moves without a reload
    import openai

    client = s.openai(s.owner_token, provider="mockai")

    async def call() -> Any:
        try:
            return await client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "console says hello"}])
        except openai.NotFoundError:  # the gateway has not heard of the new provider yet
            return None

    await eventually(call, 30, "the gateway to route to the new provider", interval=0.3)
    await s.ledger(expect=1)
    [rec] = (await s.owner.ok("GET", s.url("budget", "/api/v2/ai/interceptions")))["interceptions"]
    assert rec["provider"] == "mockai" and rec["cost_micros"] > 0, rec
    await expect(row).not_to_have_attribute("data-spent", "0", timeout=WAIT)
    assert int(await row.get_attribute("data-spent")) == rec["cost_micros"]
    bar = row.locator(".bar .spent")
    assert float((await bar.evaluate("e => e.style.width")).rstrip("%")) > 0
    await _shot(page, "budgets")

    # -- Traffic: the request with its tokens and cost; the detail has the prompt and the usage
    await page.goto(console + "/traffic")
    tr = page.locator(f'tr[data-interception="{rec["id"]}"]')
    await expect(tr).to_have_count(1)
    tu = rec["token_usage"]
    await expect(tr.locator("[data-col=input]")).to_have_text(f"{tu['input_tokens']:,}")
    await expect(tr.locator("[data-col=output]")).to_have_text(f"{tu['output_tokens']:,}")
    shown = float((await tr.locator("[data-col=cost]").inner_text()).lstrip("$"))
    assert abs(shown - _money(rec["cost_micros"])) < 1e-6, (shown, rec["cost_micros"])
    await expect(tr).to_contain_text("mockai")
    await _shot(page, "traffic")
    await tr.click()
    det = page.locator(f'[data-interception-detail="{rec["id"]}"]')
    await expect(det).to_be_visible()
    await expect(page.locator("[data-prompt]")).to_contain_text("console says hello")
    await expect(page.locator('[data-field="input_tokens"]')).to_have_text(f"{tu['input_tokens']:,}")
    await expect(page.locator('[data-field="output_tokens"]')).to_have_text(f"{tu['output_tokens']:,}")
    if rec.get("key_hint"):  # interceptions name the key that served them once the gateway records it
        await expect(det.locator('[data-field="key"]')).to_contain_text(rec["key_hint"])
    await _shot(page, "traffic-detail")

    # -- the first key is revoked at the provider (401): the providers page shows it live, no reload
    await page.goto(console + "/providers?provider=mockai")
    row1 = page.locator(f'tr[data-key-id="{k1}"]')
    await expect(row1).to_have_attribute("data-state", "valid")
    live = await ctx.new_page()  # a second tab on Traffic: the next request shows up there without a reload
    await live.goto(console + "/traffic")
    await expect(live.locator("tr[data-interception]")).to_have_count(1)
    s.upstream.on_key(K1, 401, body={"error": {"message": "invalid api key", "type": "invalid_request_error"}})
    resp = await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "again"}])
    assert resp.choices[0].message.content  # the second key served it
    await expect(live.locator("tr[data-interception]")).to_have_count(2, timeout=WAIT)
    await live.close()
    await expect(row1).to_have_attribute("data-state", "revoked", timeout=WAIT)
    await expect(row1.locator(".badge")).to_have_text("revoked")
    await expect(page.locator(f'tr[data-key-id="{k2}"]')).to_have_attribute("data-state", "valid")
    summary = page.locator('tr[data-provider="mockai"] td[data-col="keys"] span').first
    await expect(summary).to_have_attribute("data-health", "valid=1,cooling=0,revoked=1", timeout=WAIT)
    await _shot(page, "providers-revoked")

    # -- reset: the key is valid again where keypool has the route; otherwise the console says so
    s.upstream.clear_key(K1)
    has_reset = any(getattr(r.resource, "canonical", "").endswith("/reset") for r in s.app["keypool"].router.routes())
    await row1.locator("button:text('Reset')").click()
    if has_reset:
        await expect(row1).to_have_attribute("data-state", "valid", timeout=WAIT)
    else:
        await expect(page.locator("#flash")).to_contain_text("cannot reset keys yet")

    # -- Spend and usage: totals, the chart, CSV export
    await page.goto(console + "/usage")
    await expect(page.locator('[data-total="interceptions"]')).to_have_attribute("data-value", "2")
    await expect(page.locator('svg.chart rect[data-key="mockai"]')).not_to_have_count(0)
    await expect(page.locator('table[data-top="models"]')).to_contain_text("gpt-4.1")
    # both requests were answered by pool keys of mockai (the first by K1, the second by K2)
    await expect(page.locator('table[data-top="keys"] tr[data-key-id]')).to_have_count(2)
    await expect(page.locator(f'table[data-top="keys"] tr[data-key-id="{k1}"]')).to_contain_text("mockai")
    async with page.expect_download() as dl:
        await page.click("[data-export=csv]")
    text = await asyncio.to_thread(Path(await (await dl.value).path()).read_text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and rows[0]["provider"] == "mockai" and sum(int(r["interceptions"]) for r in rows) == 2, text
    await _shot(page, "usage")
    # a model's price, set from the console (USD per million tokens)
    prices = page.locator("form:has(button:text('Set price'))")
    await prices.locator("input[name=model]").fill("console-model")
    await prices.locator("input[name=input_per_mtok_micros]").fill("1.25")
    await prices.locator("input[name=output_per_mtok_micros]").fill("10")
    await prices.locator("button:text('Set price')").click()
    await expect(page.locator("#flash")).to_contain_text("Price of console-model saved")
    await expect(page.locator("body")).to_have_attribute("data-ready", "1")  # the page has been redrawn
    await page.fill("input[aria-label='Filter prices']", "console-model")
    await expect(page.locator('tr[data-price="console-model"]')).to_contain_text("1.2500")
    got = {p["model"]: p for p in (await s.owner.ok("GET", s.url("budget", "/api/v2/ai/prices")))["prices"]}
    assert got["console-model"]["input_per_mtok_micros"] == 1_250_000
    assert got["console-model"]["output_per_mtok_micros"] == 10_000_000
    await page.click("button:text('30 days')")  # a preset range: the same two requests, a longer axis
    await expect(page).to_have_url(re.compile(r"from=\d{4}-\d\d-\d\d&to="))
    await expect(page.locator('[data-total="interceptions"]')).to_have_attribute("data-value", "2")
    assert await page.locator("svg.chart text").count() > 30

    # -- Audit: the provider's creation, by the owner
    await page.goto(console + "/audit")
    await expect(page.locator('tr[data-action="provider.create"]').first).to_contain_text(me["username"])
    await _shot(page, "audit")
    assert not script_errors, script_errors


async def test_a_member_sees_only_their_own(console_chat_system: System, browser: Any) -> None:
    from playwright.async_api import expect

    s = console_chat_system
    console = s.urls["console"]
    alice = await s.member("alice-member")
    bob = await s.member("bobby-other-member")
    alice_token, _ = await _admin_token(s, alice.id)
    reg = s.url("registry", "")
    await s.owner.ok("POST", reg + "/api/v2/groups", {"name": "crew"})
    await s.owner.ok("PUT", reg + f"/api/v2/groups/crew/members/{alice.id}", status=204)
    await s.owner.ok("PUT", reg + f"/api/v2/groups/crew/members/{bob.id}", status=204)
    await s.owner.ok("PUT", s.url("budget", "/api/v2/groups/crew/ai/budget"),
                     {"spend_limit_micros": 3_000_000, "period": "month"})
    await s.owner.ok("PUT", s.url("budget", f"/api/v2/users/{bob.id}/ai/budget"),
                     {"spend_limit_micros": 7_000_000, "period": "month"})
    bob_byok = await s.api(bob.token).call("PUT", reg + "/api/v2/users/me/ai/provider-keys/openai",
                                           {"api_key": "zzbob-own-key-3Fh6Jk8"})
    chats = s.url("chatd", "/api/experimental/chats")
    mc = await s.owner.ok("POST", chats + "/model-configs",
                          {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"})
    alice_chat = await s.api(alice.token).ok("POST", chats, {"model_config_id": mc["id"], "title": "alice plans"})
    bob_chat = await s.api(bob.token).ok("POST", chats, {"model_config_id": mc["id"], "title": "bobby secret plans"})
    for who in (alice.token, bob.token):
        r = await s.openai(who).chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": f"hello from {who[-6:]}"}])
        assert r.choices[0].message.content
    await s.ledger(expect=2)
    everything = (await s.owner.ok("GET", s.url("budget", "/api/v2/ai/interceptions")))["interceptions"]
    bobs = [i["id"] for i in everything if i["user_id"] == bob.id]
    alices = [i["id"] for i in everything if i["user_id"] == alice.id]
    assert len(bobs) == 1 and len(alices) == 1
    bob_tokens = (await s.owner.ok("GET", reg + f"/api/v2/users/{bob.id}/tokens"))["tokens"]
    owner = await s.owner.ok("GET", reg + "/api/v2/users/me")
    forbidden = {bob.id, bob.username, owner["id"], *bobs, *(t["hint"] for t in bob_tokens),
                 *(t["id"] for t in bob_tokens)}
    forbidden |= {bob_chat["id"], "bobby secret plans"}
    if bob_byok.status == 200:
        forbidden.add(bob_byok.body["hint"])

    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(WAIT)
    script_errors = _no_script_errors(page)
    loaded: list[tuple[str, str]] = []

    async def on_response(resp: Any) -> None:
        if "/api/" in resp.url:
            with contextlib.suppress(Exception):  # a response the page navigated away from
                loaded.append((resp.url, await resp.text()))

    page.on("response", on_response)
    await _sign_in(page, console, alice_token)
    for p in PAGES:
        await page.goto(f"{console}/{p}")
        await expect(page.locator("body")).to_have_attribute("data-ready", "1")
        await page.wait_for_load_state("networkidle")
        if p == "traffic":
            await expect(page.locator("tr[data-interception]")).to_have_count(1)
            await expect(page.locator(f'tr[data-interception="{alices[0]}"]')).to_have_count(1)
        if p == "budgets":
            await expect(page.locator('tr[data-budget="group:crew"]')).to_have_attribute("data-limit", "3000000")
            await expect(page.locator("tr[data-budget^='user:']")).to_have_count(1)
        if p == "people":
            await expect(page.locator('section[data-detail="alice-member"]')).to_be_visible()
            await expect(page.locator(f'tr[data-chat="{alice_chat["id"]}"]')).to_contain_text("alice plans")
        if p == "usage":
            await expect(page.locator('[data-total="interceptions"]')).to_have_attribute("data-value", "1")
        html = await page.content()
        leaked = sorted(x for x in forbidden if x in html)
        assert not leaked, f"/{p} shows another user's data: {leaked}"
        await _shot(page, f"member-{p}")
    # the other member's interception, opened by id, is not found
    await page.goto(f"{console}/traffic?id={bobs[0]}")
    await expect(page.locator("#app .error")).to_be_visible()
    assert loaded, "the pages loaded their data from the same-origin APIs"
    for url, body in loaded:
        leaked = sorted(x for x in forbidden if x in body)
        assert not leaked, f"{url} returned another user's data: {leaked}: {json.dumps(body)[:300]}"
    assert not script_errors, script_errors
