"""What ``aigw dev`` hands each child: the console gets no secret."""

from __future__ import annotations

from pathlib import Path

from aigw_common.dev import DevStack
from aigw_common.settings import Settings

SECRETS = {"AIGW_DATABASE_URL": "postgresql://u:pw@127.0.0.1/aigw", "AIGW_ENCRYPTION_KEYS": "k",
           "AIGW_BOOTSTRAP_TOKEN": "aigw_owner-token-0000000000", "AIGW_OPENAI_KEY": "sk-upstream-0000",
           "AIGW_NATS_URL": "nats://127.0.0.1:4222", "AIGW_CHATD_SERVICE_TOKEN": "svc", "AIGW_ADMIN_TOKEN": "adm"}
PLAIN = {"AIGW_CONSOLE_ADDR": "127.0.0.1:18085", "AIGW_REGISTRY_ADDR": "127.0.0.1:18081",
         "AIGW_BUDGET_URL": "http://budget:8083", "AIGW_LOG_FORMAT": "text", "AIGW_SHUTDOWN_GRACE": "3s",
         "AIGW_DATA_DIR": "/tmp/x", "PATH": "/usr/bin", "OTEL_SERVICE_NAME": "x"}


def test_the_console_child_gets_no_secret(tmp_path: Path) -> None:
    stack = DevStack(tmp_path, {**SECRETS, **PLAIN})
    console = stack.child_env("console")
    assert console == PLAIN
    Settings.from_env(console)  # still a configuration the console accepts
    assert stack.child_env("registry").items() >= SECRETS.items()
