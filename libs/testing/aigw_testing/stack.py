"""The whole system in one test process: every installed service started in dependency order, waited for.

    urls = await start_stack(apps, lambda svc, urls: make_settings(AIGW_DATABASE_URL=db, ...))
    OpenAI(base_url=urls["gateway"] + "/openai/v1", api_key=token)

``settings_for(service, urls_so_far)`` returns that service's Settings (each service may get its own, e.g. its
own NATS user); ``urls_so_far`` lets chatd point at the gateway that started before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from aigw_common.cli import available_services, load_service
from aigw_common.settings import Settings

from .harness import AppHarness
from .wait import http_ok

# registry answers snapshots and token checks, keypool and budget before the gateway that uses them,
# chatd last because it calls the gateway
START_ORDER = ("registry", "keypool", "budget", "gateway", "chatd")


async def wait_ready(url: str, within: float = 30.0) -> None:
    await http_ok(url + "/readyz", within, f"{url} not ready")


async def start_stack(
    apps: AppHarness,
    settings_for: Callable[[str, Mapping[str, str]], Settings],
    services: Sequence[str] | None = None,
    *,
    ready_within: float = 30.0,
) -> dict[str, str]:
    """Start ``services`` (default: every installed one) and return their base URLs by name."""
    wanted = set(services) if services is not None else set(available_services())
    urls: dict[str, str] = {}
    for name in START_ORDER:
        if name not in wanted:
            continue
        app = load_service(name).create_app(settings_for(name, urls))
        urls[name] = await apps.start(app)
        await wait_ready(urls[name], ready_within)
    return urls
