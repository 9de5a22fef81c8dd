"""Structured logging: one JSON object per line (or plain text for humans).

Secrets are scrubbed on the way out: anything that looks like a provider key
or bearer token in a message or in an ``extra`` field is masked, so a careless
log line cannot leak a credential.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

_SECRET_PATTERNS = [
    # credentials in a URL's userinfo (nats://user:password@host, postgres://user:password@host)
    re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s/@]+(?=@)"),
    re.compile(r"(sk-(?:ant-|proj-)?)[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(AKIA)[0-9A-Z]{12,}"),
    re.compile(r"(aigw_)[A-Za-z0-9_\-]{8,}"),
    re.compile(r"((?i:bearer)\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
]
_SECRET_KEYS = frozenset(
    {"authorization", "x-api-key", "api_key", "api-key", "token", "password", "secret", "access_key_secret",
     "cookie", "set-cookie", "proxy-authorization", "x-amz-security-token", "session_token", "x-aigw-token"}
)
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo masked (``nats://gateway:***@host:4222``): for logs and reprs."""
    try:
        p = urlsplit(url)
    except ValueError:
        return redact(url)
    if p.password is None:
        return url
    host = p.netloc.rpartition("@")[2]
    return urlunsplit((p.scheme, f"{p.username or ''}:***@{host}", p.path, p.query, p.fragment))


def redact(text: str) -> str:
    for pat in _SECRET_PATTERNS:
        text = pat.sub(lambda m: m.group(1) + "***", text)
    return text


def _clean(key: str, value: Any, depth: int = 0) -> Any:
    if key.lower() in _SECRET_KEYS and value:
        return "***"
    if isinstance(value, str):
        return redact(value)
    if depth < 4 and isinstance(value, dict):  # e.g. a headers mapping passed as an extra field
        return {k: _clean(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_clean(key, v, depth + 1) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._enc = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = _clean(k, v)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        try:
            return self._enc.encode(out).decode()
        except (TypeError, msgspec.EncodeError):
            return self._enc.encode({k: (v if isinstance(v, (str, int, float, bool, type(None))) else redact(repr(v)))
                                     for k, v in out.items()}).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = redact(super().format(record))
        extras = {k: _clean(k, v) for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup_logging(service: str, *, fmt: str = "json", level: str = "INFO") -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
