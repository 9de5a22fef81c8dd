"""Hostile paths stop here: the raw request path is checked before routing, and upstream URLs are built from
parsed parts and checked to stay under the provider's base path.

Why the raw path: aiohttp decodes ``%2F`` and friends into ``request.path`` and HTTP clients resolve ``..``
when they build a URL, so a path that looks harmless after one step can walk out of the route after the
next. Everything that could change meaning under a later decode or normalisation is refused outright; no
legitimate client of the provider APIs we serve sends any of it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from yarl import URL

# Bytes that, percent-encoded in a segment, would change the path's structure after a decode:
# '/', '\', '.', ';', '%' (double encoding), '?', '#', and control characters.
_BAD_DECODED = frozenset(b"/\\.;%?#") | frozenset(range(0x20)) | {0x7F}
_PCT = re.compile(r"%(.{0,2})", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
_BAD_CHAR = re.compile(r"[\\;\x00-\x1f\x7f]")  # one C-level scan per path, not a Python loop per character
# The paths every ordinary request has: segments of unreserved characters, none "." or "..", no "%".
# One C-level match accepts them; anything else takes the detailed walk below (which says why).
_PLAIN = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.:~-]+)+")
# One id segment of a pass-through route (an OpenAI response or conversation id, a model name).
ID_SEGMENT = re.compile(r"[A-Za-z0-9_.:-]+")


class UnsafeUpstream(Exception):
    """A built upstream URL left the provider's base path: a bug or a hostile value (a model name in a
    Bedrock path); the request is refused rather than sent."""


def refusal(raw_target: str) -> str | None:
    """Why a raw request target (``request.raw_path``: path and query, nothing decoded) is refused, or None.

    Refused: anything but an origin-form path; a ``.``, ``..`` or empty segment; a backslash or ``;``;
    a control character; a percent-encoded ``/ \\ . ; % ? #`` or control character; a malformed escape.
    """
    path = raw_target.partition("?")[0]
    if _PLAIN.fullmatch(path):
        return None
    if not path.startswith("/"):
        return "the request target must be a path starting with '/'"
    if "#" in path:
        return "the path must not contain '#'"
    if path == "/":
        return None
    if (bad := _BAD_CHAR.search(path)) is not None:
        return f"the path contains {bad.group()!r}"
    for seg in path[1:].split("/"):
        if not seg:
            return "the path has an empty segment ('//' or a trailing '/')"
        if seg in (".", ".."):
            return f"the path has a {seg!r} segment"
        if "%" in seg:
            for m in _PCT.finditer(seg):
                hx = m.group(1)
                if len(hx) != 2 or not set(hx) <= _HEX:
                    return "the path has a malformed percent-escape"
                b = int(hx, 16)
                if b in _BAD_DECODED:
                    return f"the path has an encoded {chr(b)!r} (%{hx})" if b >= 0x20 else "the path has an encoded control character"
    return None


def segments(path: str) -> list[str]:
    """``/v1/models/x`` → ``["v1", "models", "x"]`` (the path has passed :func:`refusal`)."""
    return path[1:].split("/") if path != "/" else []


def build(base: URL, parts: Sequence[str], query: Mapping[str, str] | None = None) -> URL:
    """``base`` joined with decoded path ``parts`` (each encoded by yarl), then ``query``; raises
    :class:`UnsafeUpstream` when the result is not ``base``'s path plus exactly those parts."""
    url = _join(base, tuple(parts))
    return url.with_query(query) if query else url


@functools.lru_cache(maxsize=1024)
def _join(base: URL, parts: tuple[str, ...]) -> URL:
    """Built and checked once per (base URL, route): bridged routes repeat on every request."""
    url = base.joinpath(*parts) if parts else base
    check_under(url, base)
    if len(url.raw_parts) != len(_parts(base)) + len(parts):
        raise UnsafeUpstream(f"upstream path {url.raw_path!r} does not have the expected segments")
    return url


def check_under(url: URL, base: URL) -> None:
    """The final upstream URL is on ``base``'s path, with no dot segment after it (every adapter's URL,
    Bedrock's included, passes here before it is sent)."""
    bparts = _parts(base)
    uparts = url.raw_parts
    if tuple(uparts[: len(bparts)]) != bparts:
        raise UnsafeUpstream(f"upstream path {url.raw_path!r} is not under the provider's base path {base.raw_path!r}")
    for p in uparts[len(bparts):]:
        if p in ("", ".", "..") or p.lower().replace("%2e", ".") in (".", ".."):
            raise UnsafeUpstream(f"upstream path {url.raw_path!r} has a dot or empty segment")


def _parts(base: URL) -> tuple[str, ...]:
    parts = base.raw_parts
    # "http://h" and "http://h/" both have path "/"; "http://h/v1/" would end in an empty part
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]
    return tuple(parts)
