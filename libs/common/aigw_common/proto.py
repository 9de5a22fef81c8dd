"""Generate ``proto/``: one JSON Schema per bus message, from the msgspec Structs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from .schemas import ALL_MESSAGES


def render() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for t in ALL_MESSAGES:
        schema = msgspec.json.schema(t)
        out[f"{t.__struct_config__.tag}.schema.json"] = msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"
    return out


def default_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "proto"


def write_schemas(directory: Path | None = None) -> list[Path]:
    d = directory or default_dir()
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in render().items():
        p = d / name
        if not p.exists() or p.read_bytes() != body:
            p.write_bytes(body)
        written.append(p)
    return written
