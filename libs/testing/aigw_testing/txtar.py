"""Read the recorded upstream fixtures (``shared/fixtures/upstream/**.txtar``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import msgspec

_SECTION = re.compile(r"^-- (.+?) --$", re.M)


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    is_whole: bool  # the section was a whole HTTP response


@dataclass(frozen=True)
class Fixture:
    path: Path
    name: str  # e.g. "openai/chatcompletions/simple"
    comment: str
    sections: dict[str, bytes] = field(default_factory=dict)

    @property
    def request(self) -> bytes | None:
        return self.sections.get("request")

    def request_json(self) -> dict:  # type: ignore[type-arg]
        return msgspec.json.decode(self.request or b"{}")

    def has(self, section: str) -> bool:
        return section in self.sections

    def response(self, section: str) -> RecordedResponse:
        return parse_response(self.sections[section], streaming=section.startswith("streaming"))


def parse_response(raw: bytes, *, streaming: bool) -> RecordedResponse:
    if raw.startswith(b"HTTP/"):
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        lines = head.decode().split("\n")
        status = int(lines[0].split()[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() != "content-length":
                headers.append((k.strip(), v.strip()))
        return RecordedResponse(status, tuple(headers), body.rstrip(b"\n") + (b"\n" if body.strip() else b""), True)
    ctype = "text/event-stream" if streaming else "application/json"
    body = raw if streaming else raw.strip() + b"\n"
    return RecordedResponse(200, (("Content-Type", ctype),), body, False)


def parse(path: Path, root: Path) -> Fixture:
    text = path.read_bytes()
    matches = list(_SECTION.finditer(text.decode()))
    comment = text[: matches[0].start()].decode().strip() if matches else text.decode()
    sections: dict[str, bytes] = {}
    raw = text.decode()
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        body = raw[m.end() + 1 : end]
        sections[m.group(1)] = body.encode()
    name = str(path.relative_to(root).with_suffix(""))
    return Fixture(path, name, comment, sections)


def fixtures_root() -> Path:
    env = os.environ.get("AIGW_TEST_FIXTURES")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "fixtures" / "upstream"
        if cand.is_dir():
            return cand
        cand = parent / "shared" / "fixtures" / "upstream"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("shared/fixtures/upstream not found beside the repository; set AIGW_TEST_FIXTURES")


@cache
def load_all() -> dict[str, Fixture]:
    root = fixtures_root()
    return {f.name: f for f in (parse(p, root) for p in sorted(root.rglob("*.txtar")))}


def load(name: str) -> Fixture:
    return load_all()[name]
