"""The NATS authorization of the kustomize base, on a real nats-server started with its exact config.

Two directions: the rules forbid what the contract forbids (only registry publishes
``aigw.providers.changed``, only the gateway publishes usage, ...), and they allow everything the
services really do (the whole stack serves a request, each service as its own NATS user, and the
server logs no violation).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest
import yaml

from aigw_common.embedded import find_nats_server, free_port, log_tail

ROOT = Path(__file__).resolve().parents[2]
USERS = ("gateway", "registry", "keypool", "budget", "chatd")

# subject → the only user allowed to publish it (the contract's single-writer subjects)
SINGLE_WRITER = {
    "aigw.providers.changed": "registry",
    "aigw.auth.revoked": "registry",
    "aigw.usage.started": "gateway",
    "aigw.usage.tokens": "gateway",
    "aigw.budget.state": "budget",
    "aigw.budget.reclaim": "budget",
    "$KV.aigw_keys.p1.k1": "keypool",
}


def nats_conf() -> str:
    """The k8s server config as one standalone node: its ``cluster`` block (routes to the other pods) removed."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/nats.yaml").read_text()) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aigw-nats-config"]
    conf = cm["data"]["nats.conf"]
    return re.sub(r"(?ms)^cluster \{.*?^\}\n", "", conf)


@dataclass
class AuthNats:
    port: int
    log: Path
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def violations(self) -> list[str]:
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if "Violation" in ln]


@pytest.fixture
def auth_nats() -> Iterator[AuthNats]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary")
    d = Path(tempfile.mkdtemp(prefix="aigw-nats-auth-"))
    conf = nats_conf().replace("/data/jetstream", str(d / "js")).replace("/var/run/nats/nats.pid", str(d / "pid"))
    (d / "nats.conf").write_text(conf)
    passwords = {u: f"pw-{u}-{os.urandom(4).hex()}" for u in USERS}
    env = {**os.environ, "POD_NAME": "aigw-nats-0", **{f"NATS_{u.upper()}_PASSWORD": p for u, p in passwords.items()}}
    port = free_port()
    log = d / "nats.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(binary), "-c", str(d / "nats.conf"), "-a", "127.0.0.1", "-p", str(port),
                                 "-m", str(free_port())], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"nats-server refused the config:\n{log_tail(log)}"
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.05)
        yield AuthNats(port, log, passwords)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


async def _publish_errors(url: str, subjects: list[str]) -> set[str]:
    """Publish to each subject; return those the server refused."""
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
    try:
        for s in subjects:
            await nc.publish(s, b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)  # -ERR for a violation arrives asynchronously
    finally:
        await nc.close()
    return {s for s in subjects if any(f'"{s.lower()}"' in str(e).lower() for e in errors)}


async def test_only_the_owner_may_publish_single_writer_subjects(auth_nats: AuthNats) -> None:
    subjects = list(SINGLE_WRITER)
    for user in USERS:
        refused = await _publish_errors(auth_nats.url(user), subjects)
        expected = {s for s, owner in SINGLE_WRITER.items() if owner != user}
        assert refused == expected, f"user {user}: refused {sorted(refused)}, expected {sorted(expected)}"


async def test_wrong_password_is_refused(auth_nats: AuthNats) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(f"nats://gateway:wrong@127.0.0.1:{auth_nats.port}", allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=2)


def _have_stack() -> bool:
    from aigw_common.cli import available_services

    return {"gateway", "registry", "budget"} <= set(available_services())


@pytest.fixture
async def stack_under_auth(auth_nats, database_url, mock_upstream, make_settings, apps) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    from aigw_testing.stack import start_stack

    mock_upstream.play("openai/chatcompletions/simple")

    def settings_for(svc: str, urls: dict[str, str]):  # type: ignore[no-untyped-def]
        return make_settings(
            AIGW_NATS_URL=auth_nats.url(svc), AIGW_BUS_PREFIX="aigw", AIGW_DATABASE_URL=database_url,
            AIGW_BOOTSTRAP_TOKEN=TOKEN, AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1", AIGW_OPENAI_KEY="sk-up",
            AIGW_GATEWAY_URL=urls.get("gateway"),
        )

    yield await start_stack(apps, settings_for)


TOKEN = "aigw_" + "p" * 40


@pytest.mark.skipif(not _have_stack(), reason="needs gateway, registry and budget installed")
async def test_services_work_under_the_production_permissions(auth_nats: AuthNats, stack_under_auth) -> None:  # type: ignore[no-untyped-def]
    import openai

    urls = stack_under_auth
    client = openai.AsyncOpenAI(base_url=urls["gateway"] + "/openai/v1", api_key=TOKEN, max_retries=0)
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices
    # the usage crossed JetStream from the gateway user to the budget user
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        while True:
            async with http.get(urls["budget"] + "/api/v2/ai/interceptions") as r:
                assert r.status == 200, await r.text()
                rows = (await r.json())["interceptions"]
            if rows and rows[0].get("ended_at"):
                break
            assert time.monotonic() < deadline, f"budget never recorded the request: {rows}"
            await asyncio.sleep(0.2)
    assert rows[0]["provider"] == "openai"
    assert auth_nats.violations() == []
