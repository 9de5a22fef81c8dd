"""Which tool sent the request, and its session id, from headers alone."""

from __future__ import annotations

import functools

from multidict import CIMultiDictProxy

# (client name, lowercase substrings of User-Agent or originator header)
_UA_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("claude-code", ("claude-cli", "claude-code")),
    ("codex", ("codex_cli", "codex-cli", "codex_exec", "codex_vscode", "codex/")),
    ("cursor", ("cursor",)),
    ("zed", ("zed/", "zed-editor", " zed")),
    ("copilot-cli", ("copilot-cli", "github-copilot-cli")),
    ("copilot-vscode", ("githubcopilotchat", "copilot-chat", "vscode-copilot")),
    ("kilo-code", ("kilo-code", "kilocode")),
    ("roo-code", ("roo-code", "roocode", "roo code")),
    ("crush", ("crush/", "crush ")),
    ("mux", ("mux/", "coder-mux")),
    ("opencode", ("opencode",)),
    ("aigw-chatd", ("aigw-chatd",)),
)

_SESSION_HEADERS = (
    "X-AIGW-Chat-Id",
    "X-Claude-Code-Session-Id",
    "session_id",
    "Session-Id",
    "X-Session-Id",
    "X-Cursor-Session-Id",
    "X-Roo-Task-Id",
    "X-Kilo-Task-Id",
    "X-Opencode-Session",
)


def detect_client(headers: CIMultiDictProxy[str]) -> str:
    if headers.get("X-AIGW-Chat-Id"):
        return "aigw-chatd"
    ua = (headers.get("User-Agent", "") + " " + headers.get("originator", "")).lower()
    if headers.get("X-Claude-Code-Session-Id"):
        return "claude-code"
    if headers.get("Copilot-Integration-Id") or headers.get("Editor-Version", "").lower().startswith("vscode"):
        return "copilot-vscode" if "cli" not in headers.get("Copilot-Integration-Id", "").lower() else "copilot-cli"
    return _client_of(ua) if len(ua) <= 512 else _client_of.__wrapped__(ua)


@functools.lru_cache(maxsize=1024)  # bounded (1024 strings of <= 512 chars: client input); clients repeat theirs
def _client_of(ua: str) -> str:
    """The client a lowercase ``User-Agent`` + ``originator`` names (the rules below, first match)."""
    for name, needles in _UA_RULES:
        for n in needles:
            if n in ua:
                return name
    return "unknown"


def session_id(headers: CIMultiDictProxy[str]) -> str | None:
    for h in _SESSION_HEADERS:
        v = headers.get(h)
        if v:
            return v[:256]
    return None
