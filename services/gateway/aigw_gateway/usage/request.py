"""Reading a request body: what every dialect's request shape shares.

Errors are ``ValueError`` with a message meant for the client (the gateway answers 400 with it): msgspec's
"Expected `str`, got `int` - at `$.model`" becomes "model: expected a string, got number".
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

NULL = msgspec.Raw(b"null")


class RequestShape(msgspec.Struct):
    """The fields every API's request has; a dialect's subclass adds its own and says how to read them."""

    model: str = ""
    stream: bool | None = None

    def prompt(self) -> str | None:
        """The last user message's text (for recording); ``ValueError`` when its content is malformed."""
        raise NotImplementedError

    def max_output(self) -> int | None:
        raise NotImplementedError


class Part(msgspec.Struct):
    type: Any = None
    text: Any = None


class Message(msgspec.Struct):
    role: str | None = None
    type: Any = None  # Responses input items
    content: msgspec.Raw = NULL  # decoded only for the last user message


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`$")
_KINDS = {
    "str": "a string",
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "array": "an array",
    "object": "an object",
}
_GOT = {"str": "string", "int": "number", "float": "number", "bool": "boolean"}


def field_error(err: msgspec.ValidationError, at: str = "") -> ValueError:
    """msgspec's validation error → a ValueError naming the field in the client's terms."""
    m = _AT.match(str(err))
    msg, path = (m["msg"], m["path"]) if m else (str(err), None)
    path = at + (path or "")
    where = path.lstrip(".") or "request body"
    e = _EXPECTED.match(msg)
    if e is None:
        return ValueError(f"{where}: {msg[:1].lower()}{msg[1:]}")
    want = [_KINDS.get(k, k) for k in e["want"].split(" | ") if k != "null"] or ["null"]
    if not path and want == ["an object"]:
        want = ["a JSON object"]
    got = _GOT.get(e["got"], e["got"])
    return ValueError(f"{where}: expected {' or '.join(want)}, got {got}")


R = TypeVar("R")


def decode(body: bytes, kind: type[R]) -> R:
    """The request as ``kind`` (a Struct that skips what we do not read); ``ValueError`` when it is not."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise field_error(e) from None
    except msgspec.DecodeError as e:
        raise ValueError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError("request body is nested too deeply") from None


_CONTENT = str | list[Part] | None


def _prompt_text(msg: Message, text_parts: frozenset[str], where: str) -> str | None:
    try:
        content = msgspec.json.decode(msg.content, type=_CONTENT)
    except msgspec.ValidationError as e:
        raise field_error(e, where) from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    if content is None or isinstance(content, str):
        return content
    texts = [
        p.text
        for p in content
        if isinstance(p.type, str) and p.type in text_parts and isinstance(p.text, str)
    ]
    return "\n".join(texts) if texts else None


def last_user_prompt(
    items: list[Message],
    field: str,
    text_parts: frozenset[str],
    item_types: tuple[str | None, ...] | None = None,
) -> str | None:
    """The text of the last user message (``item_types``: which item ``type`` values are messages)."""
    for i in range(len(items) - 1, -1, -1):
        m = items[i]
        if m.role == "user" and (item_types is None or m.type in item_types):
            return _prompt_text(m, text_parts, f"{field}[{i}].content")
    return None
