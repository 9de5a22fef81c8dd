"""Ids: everything aigw stores is keyed by a UUID, so a path or filter reference ("id or name") that parses as
one is an id and anything else a name (the registry's lookups, the budget's filters, the directory)."""

from __future__ import annotations

import uuid


def is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except ValueError:
        return False
    return True


__all__ = ["is_uuid"]
