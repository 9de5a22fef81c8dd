"""A real nats-server of a test's own (with monitoring on), under the production authorization
(deploy/k8s/nats.yaml) for permission tests, or under none (``authorization=""``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aigw_common.embedded import find_nats_server, free_port, log_tail
from aigw_common.natsauth import BUS_USERS, password_var

ROOT = Path(__file__).resolve().parents[3]


def k8s_nats_conf() -> str:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/nats.yaml").read_text()) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aigw-nats-config"]
    return str(cm["data"]["nats.conf"])


def k8s_authorization() -> str:
    """The ``authorization { ... }`` block of the shipped k8s config, exactly as written there."""
    conf = k8s_nats_conf()
    start = conf.index("authorization {")
    depth, i = 0, start
    while True:
        c = conf[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return conf[start : i + 1] + "\n"
        i += 1


@dataclass
class AuthNats:
    port: int
    log: Path
    passwords: dict[str, str]
    monitor_port: int = 0

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """One monitoring endpoint's JSON (``varz``, ``connz?limit=1024``, …); blocking."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{endpoint}", timeout=5) as r:
            body: dict[str, Any] = json.load(r)
        return body

    def connections(self) -> list[dict[str, Any]]:
        """The open client connections (``/connz``); ``name`` is the client's: ``aigw-<service>``."""
        conns: list[dict[str, Any]] = self.monitor("connz?limit=1024").get("connections") or []
        return conns

    def url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    @property
    def anonymous_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def violations(self) -> list[str]:
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if "Violation" in ln]


@contextmanager
def auth_nats_server(authorization: str | None = None) -> Iterator[AuthNats]:
    """A single JetStream node with ``authorization`` (None: the k8s block; "": anyone may connect), passwords
    from its env, monitoring on ``monitor_port``."""
    binary = find_nats_server()
    if binary is None:
        import pytest

        pytest.skip("no nats-server binary")
    d = Path(tempfile.mkdtemp(prefix="aigw-nats-auth-"))
    conf = f"jetstream {{\n  store_dir: {d / 'js'}\n}}\n" + (k8s_authorization() if authorization is None else authorization)
    (d / "nats.conf").write_text(conf)
    passwords = {u: f"pw-{u}-{os.urandom(4).hex()}" for u in BUS_USERS}
    env = {**os.environ, **{password_var(u): p for u, p in passwords.items()}}
    port, monitor_port = free_port(), free_port()
    log = d / "nats.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(binary), "-c", str(d / "nats.conf"), "-a", "127.0.0.1", "-p", str(port),
                                 "-m", str(monitor_port)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"nats-server refused the config:\n{log_tail(log)}"
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.05)
        yield AuthNats(port, log, passwords, monitor_port)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


__all__ = ["AuthNats", "auth_nats_server", "k8s_authorization", "k8s_nats_conf"]
