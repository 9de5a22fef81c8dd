"""AWS Bedrock facts every service needs: endpoints by region and the access-key-pair credential form.

A Bedrock pool key (or BYOK credential) is either a Bedrock API key (a bearer) or an AWS access-key
pair written ``<access key id>:<secret>[:<session token>]``. The gateway signs with a pair (SigV4),
keypool cannot re-check one without signing, and the registry shows only its key id as the hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_ACCESS_KEY_ID = r"[A-Z0-9]{12,128}"
_PAIR = re.compile(rf"^({_ACCESS_KEY_ID}):([^:\s]{{1,256}})(?::(\S{{1,4096}}))?$")
_PAIR_PREFIX = re.compile(rf"^({_ACCESS_KEY_ID}):")
_RUNTIME_HOST = re.compile(r"bedrock-runtime(-fips)?\.(([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)")


def runtime_url(region: str) -> str:
    """Bedrock's runtime endpoint of a region: the default base URL of a ``bedrock`` provider."""
    return f"https://bedrock-runtime.{region}.amazonaws.com"


def region_of(base_url: str) -> str:
    """The region of a ``bedrock-runtime[-fips].<region>.amazonaws.com[.cn]`` URL; "" for any other URL."""
    m = _RUNTIME_HOST.fullmatch(urlsplit(base_url).hostname or "")
    return m.group(3) if m else ""


def control_url(base_url: str) -> str:
    """The control plane (model listing) next to a runtime endpoint; a custom base URL serves both."""
    parts = urlsplit(base_url)
    m = _RUNTIME_HOST.fullmatch(parts.hostname or "")
    if not m:
        return base_url.rstrip("/")
    return f"{parts.scheme}://bedrock{m.group(1) or ''}.{m.group(2)}"


@dataclass(frozen=True, slots=True)
class AccessKeyPair:
    access_key_id: str
    secret: str
    session_token: str | None

    def __repr__(self) -> str:  # the secret and token never reach a log line
        return f"AccessKeyPair(access_key_id={self.access_key_id!r})"


def access_key_pair(credential: str) -> AccessKeyPair | None:
    """The AWS access-key pair a credential is; None for anything else (a Bedrock API key)."""
    m = _PAIR.match(credential)
    return None if m is None else AccessKeyPair(m.group(1), m.group(2), m.group(3) or None)


def access_key_id_of(credential: str) -> str | None:
    """The access key id a credential starts with (``AKID:…``), for what must never treat it as a bearer
    or show any of it: keypool's re-check, the registry's hint."""
    m = _PAIR_PREFIX.match(credential)
    return m.group(1) if m else None
