"""docs/configuration.md and docs/bus.md stay complete as the code grows."""

from __future__ import annotations

import re
from pathlib import Path

from aigw_common import configdoc
from aigw_common import settings as settings_mod
from aigw_common.bus import Subjects

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_tables_are_the_table_of_variables() -> None:
    """docs/configuration.md's tables are what `make configuration` writes from settings.VARS, each group in
    its place, and the prose around them names no AIGW_ variable the code would reject as unknown."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert configdoc.update(doc) == doc, "docs/configuration.md is stale: run `make configuration`"
    for v in settings_mod.VARS:
        assert f"`{v.name}`" in doc, f"docs/configuration.md lacks {v.name}"
    streams = {Subjects("aigw").usage_stream, Subjects("aigw").keys_marked_stream}  # JetStream names, not variables
    named = set(re.findall(r"`(AIGW_[A-Z0-9_]+)`", doc)) - streams
    assert settings_mod.unknown_variables(dict.fromkeys(named, "")) == []


def test_bus_doc_covers_every_subject_and_message() -> None:
    doc = (ROOT / "docs" / "bus.md").read_text()
    s = Subjects("aigw")
    names = [getattr(s, p) for p in dir(Subjects) if isinstance(getattr(Subjects, p), property)]
    names += [s.budget(v) for v in ("lease", "reclaim", "prices")]
    for n in names:
        if n.endswith(">"):
            continue
        assert f"`{n}" in doc or n in doc, f"docs/bus.md lacks {n}"
    for schema in (ROOT / "proto").glob("*.schema.json"):
        kind = schema.name.removesuffix(".schema.json")
        assert f"`{kind}`" in doc or kind.rsplit(".", 1)[0] in doc, f"docs/bus.md lacks message {kind}"
