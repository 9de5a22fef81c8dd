"""The repository carries what its tests and readers need: our fixture corpus is current and described, and
no tracked file points outside the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aigw_testing.txtar import OWN_ROOT, load_all

ROOT = Path(__file__).resolve().parents[1]
# built from pieces so this file does not match itself
OUTSIDE = ("../" + "shared", "shared/" + "fixtures", "shared " + "architecture")
SWITCH = "libs/testing/aigw_testing/txtar.py"  # the optional external-corpus switch may name its directory


def test_corpus_is_what_the_builder_writes() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tests/fixtures/build_upstream.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_fixture_describes_itself() -> None:
    fixtures = load_all()
    assert len(fixtures) >= 50
    for name, fx in fixtures.items():
        assert fx.path.is_relative_to(OWN_ROOT)
        assert len(fx.comment) > 40 and "https://" in fx.comment, name  # what it covers, where its shape is from
        assert any(s.startswith(("streaming", "non-streaming")) for s in fx.sections), name


def test_corpus_covers_the_apis_and_cases() -> None:
    names = set(load_all())
    for prefix in ("openai/chatcompletions/", "openai/responses/streaming/", "openai/responses/blocking/",
                   "anthropic/"):
        assert {"simple", "stream_error"} & {n.removeprefix(prefix) for n in names if n.startswith(prefix)}, prefix
    text = "".join(f.sections.get("streaming", b"").decode() + f.sections.get("non-streaming", b"").decode()
                   for f in load_all().values())
    for needle in ('"cached_tokens":2', '"cache_read_input_tokens":9731', '"reasoning_tokens":192', "thinking_delta",
                   "input_json_delta", '"index":1,"id":"call_', "response.failed", "event: error", "HTTP/1.1 429",
                   "HTTP/1.1 529", "HTTP/1.1 500", '"input_tokens": 611', '"object": "list"', "custom_tool_call",
                   "reasoning_summary_text.delta", "data: [DONE]"):
        assert needle in text, needle


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_tracked_file_points_outside_the_repository(tmp_path: Path) -> None:
    """A fresh clone of HEAD: nothing refers to a directory beside the repository (but the optional switch)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    files = subprocess.run(["git", "-C", str(clone), "ls-files", "-z"], capture_output=True, check=True
                           ).stdout.decode().split("\0")
    found = []
    for rel in filter(None, files):
        path = clone / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for needle in OUTSIDE:
            if needle in text.lower() and not (rel == SWITCH and needle == OUTSIDE[1]):
                found.append(f"{rel}: {needle}")
    assert found == []


def test_openapi_documents_in_docs_are_current(tmp_path: Path) -> None:
    """docs/openapi/ is what `make openapi` writes from the route tables; rerun it after changing a route."""
    from aigw_common.cli import write_openapi

    written = {p.name: p.read_text() for p in write_openapi(tmp_path)}
    assert {"gateway.json", "registry.json", "keypool.json", "budget.json", "chatd.json"} <= set(written)
    committed = {p.name: p.read_text() for p in (ROOT / "docs" / "openapi").glob("*.json")}
    stale = sorted(n for n in written.keys() | committed.keys() if written.get(n) != committed.get(n))
    assert stale == [], f"stale docs/openapi files (run `make openapi`): {stale}"
