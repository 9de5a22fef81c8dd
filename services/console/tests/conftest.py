"""The console in front of the real services (registry, keypool, budget, gateway) of ``start_system``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from aigw_common.settings import CONSOLE_UPSTREAMS
from aigw_testing.stack import wait_ready
from aigw_testing.system import System


async def start_console(s: System) -> str:
    """Start the console app on a free port, routing to the system's services; its URL."""
    from aigw_console.app import create_app

    urls = {k: s.urls[k] for k in CONSOLE_UPSTREAMS if k in s.urls}
    app = create_app(dataclasses.replace(s.settings, service_urls=urls))
    url = await s.apps.start(app)
    await wait_ready(url, 30)
    s.app["console"], s.urls["console"] = app, url
    return url


@pytest.fixture
async def console_system(start_system: Any) -> System:
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway"))
    await start_console(s)
    return s


@pytest.fixture
async def console_chat_system(start_system: Any) -> System:
    """The same, with chatd (for the members' own chats)."""
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"))
    await start_console(s)
    return s
