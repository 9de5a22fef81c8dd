"""Bodies of the registry API: what requests may carry and what responses hold.

The same Structs decode requests (unknown fields are a 400), encode responses
and generate ``/api/v2/openapi.json``, so the document cannot drift from the code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from aigw_common.llm import PROVIDER_TYPES

DateTime = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]

# Documentation-only constraints (not enforced at decode: values are trimmed first, then checked by
# ``validate`` with a message naming the field). They let clients and fuzzers produce realistic values.
ProviderName = Annotated[str, Meta(extra_json_schema={
    "pattern": r"^[a-z0-9]+(-[a-z0-9]+)*$", "maxLength": 63, "examples": ["openai"]})]
ProviderType = Annotated[str, Meta(extra_json_schema={"enum": list(PROVIDER_TYPES)})]
BaseUrl = Annotated[str, Meta(extra_json_schema={
    "pattern": "^https?://[a-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]*)*$", "maxLength": 2048,
    "examples": ["https://api.openai.com/v1"]})]
AccountName = Annotated[str, Meta(extra_json_schema={
    "pattern": r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$", "maxLength": 64, "examples": ["alice"]})]
Role = Annotated[str, Meta(extra_json_schema={"enum": ["owner", "admin", "member"]})]
ApiKey = Annotated[str, Meta(extra_json_schema={
    "pattern": r"^[!-~]+$", "minLength": 1, "maxLength": 10240, "examples": ["sk-example-0000"]})]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of request bodies."""


class Out(msgspec.Struct, kw_only=True):
    """Base of response bodies (every field always present)."""


# ------------------------------------------------------------------ providers


class ProviderCreate(Body):
    name: ProviderName
    type: ProviderType
    base_url: BaseUrl
    display_name: str = ""
    enabled: bool = True
    allow_byok: bool = True
    settings: dict[str, str] = {}
    keys: list[ApiKey] = []


class ProviderPatch(Body):
    name: ProviderName | UnsetType = UNSET
    display_name: str | UnsetType = UNSET
    base_url: BaseUrl | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    allow_byok: bool | UnsetType = UNSET
    settings: dict[str, str | None] | UnsetType = UNSET


class KeyCreate(Body):
    api_key: ApiKey
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
    api_key: ApiKey


class UserKeyOut(Out):
    provider_id: str
    provider_name: str
    hint: str
    created_at: DateTime
    updated_at: DateTime


class UserKeyList(Out):
    provider_keys: list[UserKeyOut]


class ProviderConfigOut(Out):
    """What a member may know of a provider: no base URL, settings or pool-key hints."""

    name: str
    type: str
    display_name: str
    byok: bool  # the provider accepts the user's own key
    centralized: bool  # the organisation's credentials serve the user's aigw token alone
    has_key: bool  # the user has stored their own key for it


class ProviderConfigList(Out):
    providers: list[ProviderConfigOut]


# ------------------------------------------------------------------ users


class UserCreate(Body):
    username: AccountName
    email: str | None = None
    roles: list[Role] = msgspec.field(default_factory=lambda: ["member"])


class UserPatch(Body):
    username: AccountName | UnsetType = UNSET
    email: str | UnsetType | None = UNSET
    roles: list[Role] | UnsetType = UNSET


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


TokenScope = Literal["gateway", "admin"]


class TokenCreate(Body):
    name: str = ""
    # "gateway" (default): LLM routes only; "admin": also the control-plane APIs the user's roles allow
    scope: TokenScope = "gateway"
    # absent: 90 days from now; null: never (an owner's explicit choice only)
    expires_at: DateTime | UnsetType | None = UNSET


class TokenOut(Out):
    id: str
    user_id: str
    name: str
    hint: str
    scope: TokenScope
    created_at: DateTime
    expires_at: DateTime | None


class TokenCreated(TokenOut):
    token: str  # shown once


class TokenList(Out):
    tokens: list[TokenOut]


# ------------------------------------------------------------------ groups


class GroupCreate(Body):
    name: AccountName


class GroupPatch(Body):
    name: AccountName | UnsetType = UNSET


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


# ------------------------------------------------------------------ secrets rotation


class RotateSecrets(Body):
    batch_size: Annotated[int, Meta(ge=1, le=1000)] = 100  # rows per transaction
    max_rows: Annotated[int, Meta(ge=1)] | None = None  # stop after this many (the next call carries on)


class RotateSecretsOut(Out):
    key_id: str  # the current (first) key of AIGW_ENCRYPTION_KEYS: every re-sealed row uses it
    resealed: dict[str, int]  # per kind: provider-key, provider-settings, user-provider-key
    remaining: dict[str, int]  # still under another key (0 everywhere: the old keys may be dropped)


def to_builtins(obj: Out) -> dict[str, Any]:
    """A response Struct as plain JSON-able data (for audit before/after)."""
    return msgspec.to_builtins(obj)
