"""Re-checking a revoked key with the cheapest authenticated call its provider offers: the model list.

Only the status matters: 2xx means the provider accepts the key again. The
request goes to the provider's configured base URL (validated by the registry),
never follows a redirect, and is bounded by a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlencode

import aiohttp

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
_BEARER_TYPES = frozenset({"openai", "openai-compat", "openrouter", "copilot"})


def probe_request(ptype: str, base_url: str, settings: Mapping[str, str], secret: str) -> tuple[str, dict[str, str]] | None:
    """(URL, headers) of the model-list call for a provider type; None when the type has no pool keys to check."""
    base = base_url.rstrip("/")
    if ptype in _BEARER_TYPES:
        return f"{base}/models", {"Authorization": f"Bearer {secret}"}
    if ptype == "azure":
        url = f"{base}/models"
        if version := settings.get("api_version"):
            url += "?" + urlencode({"api-version": version})
        return url, {"api-key": secret}
    if ptype == "anthropic":
        return f"{base}/v1/models", {"X-Api-Key": secret, "anthropic-version": ANTHROPIC_VERSION}
    return None


async def probe(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout: float) -> int:
    """The provider's status for the call; 0 when it could not be reached (which proves nothing)."""
    try:
        async with session.get(url, headers=dict(headers), allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("key re-check could not reach the provider", extra={"error": str(e)})
        return 0
