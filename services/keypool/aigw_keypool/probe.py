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

from aigw_common.llm import ANTHROPIC_VERSION, Auth, Wire, bedrock, capabilities

log = logging.getLogger(__name__)

def probe_request(ptype: str, base_url: str, settings: Mapping[str, str], secret: str) -> tuple[str, dict[str, str]] | None:
    """(URL, headers) of the model-list call for a provider type (its API family and auth style from
    :mod:`aigw_common.llm`); None when the type's key cannot be checked this way."""
    cap = capabilities(ptype)
    if cap is None:
        return None
    base = base_url.rstrip("/")
    match cap.wire:
        case Wire.OPENAI | Wire.COPILOT:  # the base URL includes /v1 (Copilot's API has none)
            url = f"{base}/models"
        case Wire.AZURE:
            url = f"{base}/models"
            if version := settings.get("api_version"):
                url += "?" + urlencode({"api-version": version})
        case Wire.ANTHROPIC:
            url = f"{base}/v1/models"
        case Wire.BEDROCK:
            if bedrock.access_key_id_of(secret) is not None:  # an access-key pair needs SigV4: not probed
                return None
            # a Bedrock API key: bearer on the control plane
            return f"{bedrock.control_url(base)}/foundation-models?byProvider=Anthropic", {"Authorization": f"Bearer {secret}"}
    match cap.auth:
        case Auth.API_KEY:
            return url, {"api-key": secret}
        case Auth.X_API_KEY:
            return url, {"X-Api-Key": secret, "anthropic-version": ANTHROPIC_VERSION}
        case _:
            return url, {"Authorization": f"Bearer {secret}"}


async def probe(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout: float) -> int:
    """The provider's status for the call; 0 when it could not be reached (which proves nothing)."""
    try:
        async with session.get(url, headers=dict(headers), allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("key re-check could not reach the provider", extra={"error": str(e)})
        return 0
