"""Bodies of the registry API: what requests may carry and what responses hold.

The same Structs decode requests (unknown fields are a 400), encode responses
and generate ``/api/v2/openapi.json``, so the document cannot drift from the code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

DateTime = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of request bodies."""


class Out(msgspec.Struct, kw_only=True):
    """Base of response bodies (every field always present)."""


# ------------------------------------------------------------------ providers


class ProviderCreate(Body):
    name: str
    type: str
    base_url: str
    display_name: str = ""
    enabled: bool = True
    allow_byok: bool = True
    settings: dict[str, str] = {}
    keys: list[str] = []


class ProviderPatch(Body):
    name: str | UnsetType = UNSET
    display_name: str | UnsetType = UNSET
    base_url: str | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    allow_byok: bool | UnsetType = UNSET
    settings: dict[str, str | None] | UnsetType = UNSET


class KeyCreate(Body):
    api_key: str
    position: int | None = None


class KeyOut(Out):
    id: str
    hint: str
    position: int
    created_at: DateTime


class ProviderOut(Out):
    id: str
    name: str
    display_name: str
    type: str
    base_url: str
    enabled: bool
    allow_byok: bool
    settings: dict[str, str]
    keys: list[KeyOut]
    created_at: DateTime
    updated_at: DateTime


class ProviderList(Out):
    providers: list[ProviderOut]


class KeyList(Out):
    provider_id: str
    keys: list[KeyOut]


# ------------------------------------------------------------------ user keys (BYOK)


class UserKeyPut(Body):
    api_key: str


class UserKeyOut(Out):
    provider_id: str
    provider_name: str
    hint: str
    created_at: DateTime
    updated_at: DateTime


class UserKeyList(Out):
    provider_keys: list[UserKeyOut]


# ------------------------------------------------------------------ users


class UserCreate(Body):
    username: str
    email: str | None = None
    roles: list[str] = msgspec.field(default_factory=lambda: ["member"])


class UserPatch(Body):
    username: str | UnsetType = UNSET
    email: str | UnsetType | None = UNSET
    roles: list[str] | UnsetType = UNSET


class GroupRef(Out):
    id: str
    name: str


class UserOut(Out):
    id: str
    username: str
    email: str | None
    roles: list[str]
    groups: list[GroupRef]
    created_at: DateTime
    updated_at: DateTime


class UserList(Out):
    users: list[UserOut]


# ------------------------------------------------------------------ tokens


class TokenCreate(Body):
    name: str = ""
    expires_at: DateTime | None = None


class TokenOut(Out):
    id: str
    user_id: str
    name: str
    hint: str
    created_at: DateTime
    expires_at: DateTime | None


class TokenCreated(TokenOut):
    token: str  # shown once


class TokenList(Out):
    tokens: list[TokenOut]


# ------------------------------------------------------------------ groups


class GroupCreate(Body):
    name: str


class GroupPatch(Body):
    name: str | UnsetType = UNSET


class MemberRef(Out):
    id: str
    username: str


class GroupOut(Out):
    id: str
    name: str
    members: list[MemberRef]
    created_at: DateTime
    updated_at: DateTime


class GroupList(Out):
    groups: list[GroupOut]


# ------------------------------------------------------------------ audit


class AuditEntry(Out):
    id: str
    at: DateTime
    actor_id: str | None
    actor_name: str
    action: str
    resource_type: str
    resource_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditList(Out):
    audit_logs: list[AuditEntry]
    next_cursor: str | None


# ------------------------------------------------------------------ errors


class ValidationOut(Out):
    field: str
    detail: str


class ErrorOut(Out):
    message: str
    detail: str | None
    validations: list[ValidationOut]


def to_builtins(obj: Out) -> dict[str, Any]:
    """A response Struct as plain JSON-able data (for audit before/after)."""
    return msgspec.to_builtins(obj)  # type: ignore[no-any-return]
