"""``aigw dev``: the whole system on one machine, from a fresh clone, with nothing else installed.

Order of start: embedded Postgres and NATS (unless ``AIGW_DATABASE_URL`` /
``AIGW_NATS_URL`` point elsewhere), the encryption key and the owner token
(generated once into the state dir and reused), migrations, then every
installed service as a child process, each waited for on ``/readyz``. Order of
stop (Ctrl-C or SIGTERM): services (SIGTERM, grace, then SIGKILL of their
process group), NATS, Postgres. Every child runs in its own session, so the
terminal's Ctrl-C reaches only this process and the order holds; every child
also has a parent-death signal, so not even ``kill -9`` of this process
leaves an orphan. Data stays in the state dir (``.aigw/``) for next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .crypto import generate_key, new_token
from .embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    die_with_parent,
    log_tail,
    port_is_free,
    stop_process,
)
from .errors import AigwError, ConfigError
from .llm import Api, capabilities
from .natsauth import BUS_USERS, authorization_block
from .settings import VARS, Settings, env_for_service
from .signing import PRODUCERS, Signer, generate_keypair

READY_TIMEOUT = 90.0
# All the console reads (settings.VARS): where it listens, where the admin APIs are, logging and drain, its
# session TTL. It holds no secret, so its child environment is only these.
CONSOLE_VARS = frozenset(v.name for v in VARS if "console" in v.readers)
DEV_DATABASE = "aigw"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def _secret_file(path: Path, make: str) -> str:
    """The value kept in ``path`` (mode 0600), created with ``make`` the first time."""
    with contextlib.suppress(FileNotFoundError):
        v = path.read_text().strip()
        if v:
            return v
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(make + "\n")
    return make


def _nats_passwords(state: Path) -> dict[str, str]:
    """One password per service for the embedded NATS, kept in ``.aigw/nats-users/<service>`` (0600)."""
    d = state / "nats-users"
    d.mkdir(mode=0o700, exist_ok=True)
    return {u: _secret_file(d / u, secrets.token_urlsafe(24)) for u in BUS_USERS}


def _bus_keys(state: Path) -> tuple[str, dict[str, str]]:
    """The producers' bus signing keys, kept in ``.aigw/bus-keys/<producer>.key`` (0600), and the
    ``AIGW_BUS_VERIFY_KEYS`` value with their public halves."""
    d = state / "bus-keys"
    d.mkdir(mode=0o700, exist_ok=True)
    private = {p: _secret_file(d / f"{p}.key", generate_keypair()[0]) for p in PRODUCERS}
    verify = ",".join(f"{p}:{Signer.from_b64(p, k).public_b64()}" for p, k in private.items())
    return verify, private


def _with_database(url: str, db: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


async def _ensure_database(admin_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(admin_url, name)


def _api(ptype: str) -> Api | None:
    cap = capabilities(ptype)
    return None if cap is None else cap.api


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str


@dataclass
class DevStack:
    """Everything ``aigw dev`` started, so it can be stopped in reverse order whatever happened."""

    state: Path
    env: dict[str, str]
    pg: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    children: list[Child] = field(default_factory=list)
    settings: Settings | None = None
    token: str = ""
    nats_passwords: dict[str, str] = field(default_factory=dict)  # embedded NATS: user -> password
    signing_keys: dict[str, str] = field(default_factory=dict)  # generated bus signing keys, by producer
    chatd_keys: str = ""

    async def start(self) -> None:
        from .cli import available_services, run_migrations

        self.state.mkdir(parents=True, exist_ok=True)
        env = self.env
        services = available_services()
        if not services:
            raise ConfigError("no aigw service is installed in this environment (run `uv sync --all-packages`)")
        # Fail before starting anything if a service port is taken (another aigw dev, usually).
        base = Settings.from_env(env)
        for s in services:
            a = base.addrs[s]
            if not port_is_free(a.port, _local(a.host)):
                raise ConfigError(f"port {a.port} for {s} is in use (another aigw dev?); set AIGW_{s.upper()}_ADDR")

        if not env.get("AIGW_DATABASE_URL"):
            say(f"aigw dev: starting embedded Postgres in {self.state / 'postgres'}")
            self.pg = EmbeddedPostgres(self.state / "postgres")
            env["AIGW_DATABASE_URL"] = await _ensure_database(await self.pg.start(), DEV_DATABASE)
        if not env.get("AIGW_NATS_URL"):
            say(f"aigw dev: starting embedded NATS (JetStream) in {self.state / 'nats'}, one user per service")
            self.nats_passwords = _nats_passwords(self.state)
            self.nats = EmbeddedNats(self.state / "nats", authorization=authorization_block(
                self.nats_passwords, prefix=base.bus_prefix))
            await self.nats.start()
            # the dev process itself never connects; each child gets its own user (see child_env)
            env["AIGW_NATS_URL"] = self.nats.url
        if not env.get("AIGW_BUS_VERIFY_KEYS"):
            verify, self.signing_keys = _bus_keys(self.state)
            env["AIGW_BUS_VERIFY_KEYS"] = verify
        if not env.get("AIGW_ENCRYPTION_KEYS"):
            env["AIGW_ENCRYPTION_KEYS"] = _secret_file(self.state / "encryption-keys", generate_key())
        if not env.get("AIGW_BUS_SEALING_KEYS"):
            env["AIGW_BUS_SEALING_KEYS"] = _secret_file(self.state / "bus-sealing-keys", generate_key())
        # chatd seals its own rows (a running turn's token) with a key of its own, not the registry's
        self.chatd_keys = _secret_file(self.state / "chatd-encryption-keys", generate_key())
        if env.get("AIGW_BOOTSTRAP_TOKEN"):
            self.token = env["AIGW_BOOTSTRAP_TOKEN"]
            _secret_file(self.state / "owner-token", self.token)
        else:
            self.token = env["AIGW_BOOTSTRAP_TOKEN"] = _secret_file(self.state / "owner-token", new_token())
        env.setdefault("AIGW_DATA_DIR", str(self.state / "data"))
        env.setdefault("AIGW_LOG_FORMAT", "text")
        # a local mock or model server (Ollama, vLLM on this machine) is the usual upstream of a dev stack
        env.setdefault("AIGW_ALLOW_PRIVATE_UPSTREAMS", "loopback")
        gw = base.addrs["gateway"]
        env.setdefault("AIGW_GATEWAY_URL", f"http://{_local(gw.host)}:{gw.port}")
        self.settings = Settings.from_env(env)

        applied = await run_migrations(self.settings)
        say(f"aigw dev: {len(applied)} migration(s) applied")

        logs = self.state / "logs"
        logs.mkdir(exist_ok=True)
        for s in services:
            self.children.append(self._spawn(s, logs / f"{s}.log"))
        await asyncio.gather(*(self._wait_ready(c) for c in self.children))

    def child_env(self, name: str) -> dict[str, str]:
        """The environment of one service: only the secrets it holds (``env_for_service``; chatd its own
        at-rest key), its own NATS user and, for a producer, only its own signing key; the console, which
        holds no secret, only the AIGW_ variables it reads."""
        env = dict(self.env)
        if name == "console":
            return {k: v for k, v in env.items() if not k.startswith("AIGW_") or k in CONSOLE_VARS}
        env = env_for_service(name, env)
        if name == "chatd" and "AIGW_ENCRYPTION_KEYS" in env and self.chatd_keys:
            env["AIGW_ENCRYPTION_KEYS"] = self.chatd_keys
        if self.nats is not None and name in self.nats_passwords:
            env["AIGW_NATS_URL"] = self.nats.url_for(name, self.nats_passwords[name])
        for producer in PRODUCERS:  # keys given in the environment too: each producer gets only its own
            if producer != name:
                env.pop(f"AIGW_{producer.upper()}_SIGNING_KEY", None)
            elif producer in self.signing_keys:
                env[f"AIGW_{producer.upper()}_SIGNING_KEY"] = self.signing_keys[producer]
        return env

    def _spawn(self, name: str, log: Path) -> Child:
        assert self.settings is not None
        a = self.settings.addrs[name]
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aigw_common.cli", name], env=self.child_env(name), stdin=subprocess.DEVNULL,
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        return Child(name, proc, log, f"http://{_local(a.host)}:{a.port}")

    async def _wait_ready(self, c: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                if c.proc.poll() is not None:
                    raise AigwError(f"{c.name} exited with {c.proc.returncode} while starting:\n{log_tail(c.log)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(c.url + "/readyz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AigwError(f"{c.name} not ready after {READY_TIMEOUT:.0f}s:\n{log_tail(c.log)}")
                await asyncio.sleep(0.2)

    async def wait_exit(self) -> Child:
        """Return the first child that exits on its own."""
        while True:
            for c in self.children:
                if c.proc.poll() is not None:
                    return c
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        grace = (self.settings.shutdown_grace if self.settings else 20.0) + 5.0
        await asyncio.gather(*(stop_process(c.proc, signal.SIGTERM, grace, c.name) for c in self.children))
        for c in self.children:  # a service's own children (if any) go with its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
        self.children.clear()
        if self.nats is not None:
            await self.nats.stop()
        if self.pg is not None:
            await self.pg.stop()


def banner(stack: DevStack) -> str:
    s = stack.settings
    assert s is not None
    lines = ["", "aigw is up.", ""]
    for c in stack.children:
        url = c.url + "/" if c.name == "console" else c.url  # the console is a page to open, not an API base
        lines.append(f"  {c.name:<9} {url}   (log: {c.log})")
    gw_addr = s.addrs["gateway"]
    gw = f"http://{_local(gw_addr.host)}:{gw_addr.port}"
    console = next((c for c in stack.children if c.name == "console"), None)
    if console is not None:
        lines += ["", f"  Admin console: open {console.url}/ and sign in with the owner token below."]
    lines += ["", f"  owner token: {stack.token}", f"  (kept in {stack.state / 'owner-token'}; data in {stack.state})"]
    if stack.pg is not None:
        lines.append(f"  embedded Postgres data: {stack.pg.pgdata}"
                     + ("" if stack.pg.pgdata.is_relative_to(stack.state.absolute())
                        else " (outside the state dir: the Postgres user cannot enter it)"))
    lines.append("")
    openai_like = next((p for p in s.providers if _api(p.type) == "openai"), None)
    anthropic_like = next((p for p in s.providers if _api(p.type) == "anthropic"), None)
    if openai_like is None and anthropic_like is None:
        lines += ["  No provider is configured yet. Restart with e.g. AIGW_OPENAI_KEY=sk-... aigw dev,",
                  "  or add one: aigw admin providers create --help", ""]
        openai_like_name = "openai"
    else:
        openai_like_name = openai_like.name if openai_like else ""
    if openai_like is not None or anthropic_like is None:
        name = openai_like_name
        lines += [
            "  First request (curl):",
            f"    curl -s {gw}/{name}/v1/chat/completions \\",
            f"      -H 'Authorization: Bearer {stack.token}' -H 'Content-Type: application/json' \\",
            "      -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}]}'",
            "",
            "  First request (openai SDK):",
            "    from openai import OpenAI",
            f"    client = OpenAI(base_url=\"{gw}/{name}/v1\", api_key=\"{stack.token}\")",
            "    print(client.chat.completions.create(model=\"gpt-4o-mini\",",
            "          messages=[{\"role\": \"user\", \"content\": \"Say hi\"}]).choices[0].message.content)",
            "",
        ]
    if anthropic_like is not None:
        lines += [
            "  First request (anthropic SDK):",
            "    from anthropic import Anthropic",
            f"    client = Anthropic(base_url=\"{gw}/{anthropic_like.name}\", api_key=\"{stack.token}\")",
            "    print(client.messages.create(model=\"claude-3-5-haiku-latest\", max_tokens=100,",
            "          messages=[{\"role\": \"user\", \"content\": \"Say hi\"}]).content[0].text)",
            "",
        ]
    lines.append("Press Ctrl-C to stop (everything shuts down; data is kept).")
    return "\n".join(lines)


async def _run(state: Path, env: dict[str, str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = DevStack(state, env)
    stopper = asyncio.create_task(stop.wait())
    startup = asyncio.create_task(stack.start())
    rc = 0
    try:
        await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
            say("aigw dev: interrupted while starting")
            return 130
        startup.result()
        say(banner(stack))
        died = asyncio.create_task(stack.wait_exit())
        await asyncio.wait({stopper, died}, return_when=asyncio.FIRST_COMPLETED)
        if died.done():
            c = died.result()
            say(f"aigw dev: {c.name} exited with {c.proc.returncode}; stopping everything\n{log_tail(c.log)}")
            rc = 1
        died.cancel()
    except AigwError as e:
        say(f"aigw dev: {e}")
        rc = 1
    finally:
        stopper.cancel()
        say("aigw dev: stopping services, then NATS, then Postgres")
        await stack.stop()
        say("aigw dev: stopped")
    return rc


def main(state_dir: str, env: Mapping[str, str]) -> int:
    """Run until Ctrl-C/SIGTERM; returns the process exit code."""
    return asyncio.run(_run(Path(state_dir).absolute(), dict(env)))
