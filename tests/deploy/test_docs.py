"""docs/configuration.md and docs/bus.md stay complete as the code grows."""

from __future__ import annotations

import re
from pathlib import Path

from aigw_common import settings as settings_mod
from aigw_common.bus import Subjects

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_lists_every_variable_the_code_accepts() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(v for v in settings_mod._SCALARS if f"`{v}`" not in doc)
    assert not missing, f"docs/configuration.md lacks {missing}"
    for f in settings_mod._PROVIDER_FIELDS:
        assert f"AIGW_PROVIDER_<N>_{f}`" in doc or f"`_{f}`" in doc, f"AIGW_PROVIDER_<N>_{f} undocumented"
    # and documents nothing the code would reject as unknown
    streams = {Subjects("aigw").usage_stream, Subjects("aigw").keys_marked_stream}  # JetStream names, not variables
    for name in set(re.findall(r"`(AIGW_[A-Z0-9_]+)`", doc)) - streams:
        assert name in settings_mod._SCALARS, f"docs/configuration.md documents unknown {name}"


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
