"""``aigw dev`` from a fresh state dir: embedded Postgres + NATS, every service, a real request, a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigw_common.cli import available_services
from aigw_common.embedded import find_postgres_bin_dir, free_port

pytestmark = [
    pytest.mark.skipif(not {"gateway", "registry"} <= set(available_services()),
                       reason="needs the gateway and registry services"),
    pytest.mark.skipif(find_postgres_bin_dir() is None, reason="no PostgreSQL binaries for the embedded server"),
]


def _children() -> dict[int, int]:
    """pid → ppid of every process on the machine."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            out[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(root: int) -> set[int]:
    tree = _children()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in tree.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _survivors(pids: set[int], within: float) -> dict[int, bytes]:
    """Processes of ``pids`` still alive after ``within`` seconds, with their command lines."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    out = {}
    for p in pids:
        if _alive(p):
            try:
                out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
            except OSError:
                continue
    return out


@pytest.fixture
def state_root() -> Iterator[Path]:
    """A fresh dir the unprivileged Postgres user can enter when the suite runs as root (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="aigw-dev-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _read_until(stream: asyncio.StreamReader, marker: str, within: float, seen: list[str]) -> None:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("aigw dev did not come up:\n" + "".join(seen[-40:]))
        try:
            line = (await asyncio.wait_for(stream.readline(), left)).decode(errors="replace")
        except TimeoutError:
            continue
        if not line:
            raise AssertionError("aigw dev exited:\n" + "".join(seen[-40:]))
        seen.append(line)
        if marker in line:
            return


async def test_aigw_dev_serves_a_request_and_leaves_nothing_behind(state_root: Path, mock_upstream) -> None:  # type: ignore[no-untyped-def]
    import openai

    mock_upstream.play("openai/chatcompletions/simple")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIGW_", "OTEL_"))}
    ports = {svc: free_port() for svc in ("gateway", "registry", "keypool", "budget", "chatd", "console")}
    env.update({f"AIGW_{svc.upper()}_ADDR": f"127.0.0.1:{p}" for svc, p in ports.items()})
    env.update(AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1", AIGW_OPENAI_KEY="sk-upstream",
               AIGW_SHUTDOWN_GRACE="3s")
    state = state_root / ".aigw"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "aigw"), "dev", "--dir", str(state), env=env, cwd=state_root,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    tree: set[int] = set()
    try:
        await _read_until(proc.stdout, "Press Ctrl-C", 60, seen)
        tree = _descendants(proc.pid)
        out = "".join(seen)
        token = (state / "owner-token").read_text().strip()
        assert token in out, "the owner token is printed"
        assert f"http://127.0.0.1:{ports['gateway']}" in out
        assert oct((state / "owner-token").stat().st_mode & 0o777) == "0o600"
        assert (state / "encryption-keys").exists()

        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{ports['gateway']}/openai/v1", api_key=token,
                                    max_retries=0)
        resp = await client.chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content
        assert mock_upstream.count_by_key["sk-upstream"] == 1

        await _nats_refuses_anonymous_and_logs_hold_no_password(state)

        console = f"http://127.0.0.1:{ports['console']}/"
        assert f"  console   {console}" in out, "the console line, aligned with the other services"
        await _console_signs_in(console, token)

        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = await asyncio.wait_for(proc.communicate(), 40)
        seen.append(rest.decode(errors="replace"))
        assert proc.returncode == 0, "".join(seen[-40:])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    left = await asyncio.to_thread(_survivors, tree, 5.0)
    assert len(tree) >= 4, f"expected Postgres, NATS and services as children, saw {tree}"
    assert left == {}, f"orphans after Ctrl-C: {left}"
    # data is kept for next time
    assert (state / "postgres" / "pgdata" / "PG_VERSION").exists()
    assert (state / "nats" / "jetstream").exists()


async def _nats_refuses_anonymous_and_logs_hold_no_password(state: Path) -> None:
    """The embedded NATS runs with one user per service: no anonymous client, no wrong password; the
    passwords and bus signing keys are 0600 files, and no service logs its password."""
    import nats
    import nats.errors

    port = int((state / "nats" / "port").read_text().strip())
    for url in (f"nats://127.0.0.1:{port}", f"nats://gateway:wrong@127.0.0.1:{port}"):
        with pytest.raises(nats.errors.Error):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
    passwords = {f.name: f.read_text().strip() for f in (state / "nats-users").iterdir()}
    assert set(passwords) == {"gateway", "registry", "keypool", "budget", "chatd"}
    nc = await nats.connect(f"nats://gateway:{passwords['gateway']}@127.0.0.1:{port}", allow_reconnect=False,
                            connect_timeout=3)
    await nc.close()
    for f in [*(state / "nats-users").iterdir(), *(state / "bus-keys").iterdir()]:
        assert oct(f.stat().st_mode & 0o777) == "0o600", f
    logs = "\n".join(f.read_text(errors="replace") for f in (state / "logs").iterdir())
    assert "nats connected" in logs
    for pw in passwords.values():
        assert pw not in logs
    for key in (state / "bus-keys").iterdir():
        assert key.read_text().strip() not in logs
    violations = [ln for ln in (state / "nats" / "nats.log").read_text().splitlines() if "Violation" in ln]
    assert violations == [], "every service works within its generated permissions"


async def _console_signs_in(console: str, token: str) -> None:
    """The printed console URL shows the sign-in form; the owner token opens a session on /providers."""
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(console) as r:
            assert r.status == 200 and 'name="token"' in await r.text()
        async with http.post(console + "signin", data={"token": token}) as r:
            assert r.status == 200 and r.url.path == "/providers", (r.status, r.url)
        async with http.get(console + "api/v2/ai/providers") as r:
            assert r.status == 200 and "providers" in await r.json()
