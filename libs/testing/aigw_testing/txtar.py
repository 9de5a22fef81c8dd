"""Read the recorded upstream fixtures (txtar files: a description, then ``-- section --`` blocks).

Our own corpus lives in the repository, ``tests/fixtures/upstream/`` (written by
``tests/fixtures/build_upstream.py``; layout in ``docs/testing.md``); every test uses it.
An external corpus in the same layout is an optional conformance set: when
``AIGW_TEST_FIXTURES`` names a directory, or a ``shared/fixtures/upstream`` directory sits
beside the repository, the replay tests also run over it, their ids prefixed ``ext:``.
Nothing fails or is skipped when it is absent.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

_SECTION = re.compile(r"^-- (.+?) --$", re.M)
REPO_ROOT = Path(__file__).resolve().parents[3]
OWN_ROOT = REPO_ROOT / "tests" / "fixtures" / "upstream"
EXT = "ext:"


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    is_whole: bool  # the section was a whole HTTP response


@dataclass(frozen=True)
class Fixture:
    path: Path
    name: str  # e.g. "openai/chatcompletions/simple", the same in every corpus
    comment: str
    sections: dict[str, bytes] = field(default_factory=dict)
    corpus: str = ""  # "" for ours, "ext:" for the external conformance set

    @property
    def key(self) -> str:
        """Unique across corpora: the name, prefixed ``ext:`` for the external set."""
        return self.corpus + self.name

    @property
    def request(self) -> bytes | None:
        return self.sections.get("request")

    def request_json(self) -> dict[str, Any]:
        return msgspec.json.decode(self.request or b"{}")  # a JSON object by layout

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


def parse(path: Path, root: Path, corpus: str = "") -> Fixture:
    raw = path.read_bytes().decode()
    matches = list(_SECTION.finditer(raw))
    comment = raw[: matches[0].start()].strip() if matches else raw
    sections: dict[str, bytes] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        sections[m.group(1)] = raw[m.end() + 1 : end].encode()
    name = path.relative_to(root).with_suffix("").as_posix()
    return Fixture(path, name, comment, sections, corpus)


def fixtures_root() -> Path:
    """Our corpus, in the repository."""
    return OWN_ROOT


def external_root() -> Path | None:
    """The optional conformance corpus: ``AIGW_TEST_FIXTURES``, else ``shared/fixtures/upstream`` beside the
    repository (or beside a directory holding it, for git worktrees); None when there is none."""
    env = os.environ.get("AIGW_TEST_FIXTURES")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"AIGW_TEST_FIXTURES={env!r} is not a directory")
        return path
    for parent in REPO_ROOT.parents:
        cand = parent / "shared" / "fixtures" / "upstream"
        if cand.is_dir():
            return cand
    return None


def _read(root: Path, corpus: str) -> dict[str, Fixture]:
    return {f.name: f for f in (parse(p, root, corpus) for p in sorted(root.rglob("*.txtar")))}


@cache
def load_all() -> dict[str, Fixture]:
    """Our corpus, by name."""
    return _read(fixtures_root(), "")


@cache
def load_external() -> dict[str, Fixture]:
    """The external corpus by (unprefixed) name; empty when absent."""
    root = external_root()
    return _read(root, EXT) if root is not None else {}


def all_corpora() -> dict[str, Fixture]:
    """Ours, then the external set, keyed by :attr:`Fixture.key` (``ext:`` for the external one)."""
    return {**load_all(), **{f.key: f for f in load_external().values()}}


def load(name: str) -> Fixture:
    """One fixture of ours by name, or of the external set as ``ext:<name>``."""
    if name.startswith(EXT):
        return load_external()[name.removeprefix(EXT)]
    return load_all()[name]
