"""Bus messages: the source of truth for what crosses NATS.

Every message is a msgspec Struct, encoded as JSON, tagged with its kind and
carrying a version ``v``. ``proto/`` holds JSON Schemas generated from these
(``make proto``); a test fails when they are stale. Secrets inside messages
are always sealed (see :mod:`aigw_common.crypto`), never clear text.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True, forbid_unknown_fields=False):
    """Base of every bus message. ``v`` lets a consumer refuse a version it does not know.

    ``signed_by`` names the only service whose signature makes a message of this type acceptable
    (see :mod:`aigw_common.signing`): set it on every message that grants or changes authority.
    The bus signs such a message on publish/reply and drops one that fails the check on receipt.
    """

    v: int = 1  # bumped only by a breaking change of this kind (docs/bus.md, "Message versions")
    signed_by: ClassVar[str] = ""
    # For a request type: the service that answers it. An error reply to it (``bus.error``) is signed as that
    # service, so a caller accepts one only from where the real reply would come.
    answered_by: ClassVar[str] = ""

    @classmethod
    def kind_tag(cls) -> str:
        """The ``kind`` this type is tagged with on the wire."""
        return str(cls.__struct_config__.tag)


class BusErrorReply(Message, frozen=True, kw_only=True, tag="bus.error"):
    """A responder's answer when it cannot give the reply asked for (its handler failed, or the request
    could not be read): the caller raises :class:`~aigw_common.errors.RemoteError` at once instead of
    waiting out its timeout. ``message`` never carries internals (an unexpected failure says "internal
    error"; the responder logs the cause). Signed as the request type's ``answered_by``."""

    code: str  # unavailable (retryable) | refused (not retryable) | bad_request | internal
    message: str
    retryable: bool


# --------------------------------------------------------------------- registry


class ProvidersChanged(Message, frozen=True, kw_only=True, tag="providers.changed"):
    signed_by: ClassVar[str] = "registry"
    revision: int
    provider_ids: list[str] = []


class SealedKey(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    position: int
    hint: str
    sealed: str  # api key, sealed for the bus


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    type: str
    display_name: str
    base_url: str
    enabled: bool = True
    allow_byok: bool = True
    settings_sealed: str | None = None  # JSON object of provider settings, sealed for the bus
    keys: list[SealedKey] = []
    updated_at: float = 0.0


class SnapshotRequest(Message, frozen=True, kw_only=True, tag="registry.snapshot.request"):
    answered_by: ClassVar[str] = "registry"
    known_revision: int | None = None


class RegistrySnapshot(Message, frozen=True, kw_only=True, tag="registry.snapshot"):
    signed_by: ClassVar[str] = "registry"
    revision: int
    providers: list[ProviderConfig] = []
    # The caller's known_revision is the registry's: nothing is sent but the revision (``providers`` is
    # empty and means nothing). A follower that predates this flag sees a revision it already holds and
    # ignores the answer, as it ignores any answer at or below its revision.
    unchanged: bool = False


class AuthVerifyRequest(Message, frozen=True, kw_only=True, tag="auth.verify.request"):
    answered_by: ClassVar[str] = "registry"
    token_hash: str


class UserProviderKey(msgspec.Struct, frozen=True, kw_only=True):
    provider_id: str
    provider_name: str
    hint: str
    sealed: str  # the user's stored credential, sealed for the bus


TokenScope = Literal["gateway", "admin"]


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    username: str
    roles: list[str]
    group_ids: list[str] = []
    token_id: str
    # "gateway": LLM routes only; "admin": also the control-plane routes the roles allow. A reply without it
    # (an older registry) is read as the lesser scope.
    scope: TokenScope = "gateway"
    expires_at: float | None = None  # epoch seconds; caches drop the identity once it has passed
    provider_keys: list[UserProviderKey] = []


class AuthVerifyReply(Message, frozen=True, kw_only=True, tag="auth.verify.reply"):
    signed_by: ClassVar[str] = "registry"
    identity: Identity | None = None  # None: unknown, expired or revoked token


class DirectoryLookup(Message, frozen=True, kw_only=True, tag="registry.directory.lookup"):
    """Who is behind these references: ``*_refs`` are ids or names of live users/groups; ``*_ids`` are ids
    whose names are wanted, deleted users included (history keeps its labels). At most 500 in all."""

    answered_by: ClassVar[str] = "registry"

    user_refs: list[str] = []
    group_refs: list[str] = []
    user_ids: list[str] = []
    group_ids: list[str] = []


class DirectoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str  # username or group name
    deleted: bool = False
    group_ids: list[str] = []  # a user's groups


class DirectoryReply(Message, frozen=True, kw_only=True, tag="registry.directory.reply"):
    signed_by: ClassVar[str] = "registry"
    users: list[DirectoryEntry] = []  # only what was found
    groups: list[DirectoryEntry] = []
    error: str | None = None


class AuditRecord(Message, frozen=True, kw_only=True, tag="registry.audit"):
    """An admin action another service performed (keypool: a key reset), for the registry's audit log: the
    one place an operator reads who did what, written by its owner only (no service writes another's
    tables). Signed by the acting service; the registry allows each sender its own actions only."""

    answered_by: ClassVar[str] = "registry"

    signed_by: ClassVar[str] = "keypool"

    actor_id: str | None
    actor_name: str
    action: str
    resource_type: str
    resource_id: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class AuditAck(Message, frozen=True, kw_only=True, tag="registry.audit.ack"):
    signed_by: ClassVar[str] = "registry"

    error: str | None = None  # why the record was refused; None: written


class DirectoryChanged(Message, frozen=True, kw_only=True, tag="registry.directory.changed"):
    """Users and groups whose name, existence or membership changed: followers drop what they cached."""

    signed_by: ClassVar[str] = "registry"

    user_ids: list[str] = []
    group_ids: list[str] = []


class AuthRevoked(Message, frozen=True, kw_only=True, tag="auth.revoked"):
    signed_by: ClassVar[str] = "registry"
    token_ids: list[str] = []
    user_ids: list[str] = []
    # Users that were deleted (also listed in user_ids): services drop what they keep per user
    # (chatd: personal skills). user_ids alone only evicts caches (a role change, a suspension).
    deleted_user_ids: list[str] = []


# --------------------------------------------------------------------- keypool

KeyStateName = Literal["valid", "cooling", "revoked"]


class RateLimitInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_at: float | None = None
    reset_tokens_at: float | None = None


class KeyMarked(Message, frozen=True, kw_only=True, tag="keys.marked"):
    event_id: str
    provider_id: str
    key_id: str
    state: KeyStateName
    until: float | None = None  # epoch seconds, for cooling
    status_code: int = 0
    gateway_id: str = ""
    at: float = 0.0
    ratelimit: RateLimitInfo | None = None


class KeyState(Message, frozen=True, kw_only=True, tag="keys.state"):
    signed_by: ClassVar[str] = "keypool"
    provider_id: str
    key_id: str
    state: KeyStateName
    until: float | None = None
    status_code: int = 0
    updated_at: float = 0.0
    # why the key is in this state: rate_limited | budget_exhausted | auth_rejected | cooldown_over | reset | recovered
    reason: str = ""
    next_check_at: float | None = None  # revoked: when keypool next re-checks the key with the provider
    checks: int = 0  # revoked: re-checks the provider refused so far (the backoff doubles with each)


class KeyStat(msgspec.Struct, frozen=True, kw_only=True):
    provider_id: str
    key_id: str
    successes: int = 0
    failures: int = 0
    last_status: int = 0
    ratelimit: RateLimitInfo | None = None


class KeyReport(Message, frozen=True, kw_only=True, tag="keys.report"):
    gateway_id: str
    at: float
    keys: list[KeyStat] = []


class KeysExhausted(Message, frozen=True, kw_only=True, tag="keys.exhausted"):
    signed_by: ClassVar[str] = "keypool"
    provider_id: str
    soonest: float | None = None  # epoch seconds when a key comes back; None: every key revoked


# --------------------------------------------------------------------- usage


class TokenCounts(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class UsageEvent(Message, frozen=True, kw_only=True):
    """Common fields of every event on the ``AIGW_USAGE`` stream; ``event_id`` is the dedup id."""

    event_id: str
    interception_id: str
    at: float
    # Some text of this event was cut to fit (AIGW_RECORD_PROMPT_BYTES for prompts and tool arguments, the
    # server's max_payload for any field): what is recorded is a prefix, cut on a UTF-8 boundary.
    truncated: bool = False


class InterceptionStarted(UsageEvent, frozen=True, kw_only=True, tag="usage.started"):
    user_id: str | None
    group_ids: list[str] = []
    token_id: str | None = None
    provider_id: str
    provider_name: str
    provider_type: str
    endpoint: str  # chat_completions | responses | messages
    model: str
    client: str = "unknown"
    session_id: str | None = None
    credential_kind: Literal["centralised", "byok"] = "centralised"
    credential_hint: str = ""
    key_id: str | None = None
    streaming: bool = False
    reservation_micros: int = 0
    metadata: dict[str, str] = {}
    # The replica that admitted the request (its BudgetGuard lease holder id): the budget service
    # credits the recorded cost to that replica's budget leases, so held headroom is not counted twice.
    gateway_id: str = ""


class TokenUsage(UsageEvent, frozen=True, kw_only=True, tag="usage.tokens"):
    model: str
    tokens: TokenCounts


class PromptRecorded(UsageEvent, frozen=True, kw_only=True, tag="usage.prompt"):
    prompt: str


class ToolUsage(UsageEvent, frozen=True, kw_only=True, tag="usage.tool"):
    name: str
    call_id: str = ""
    arguments: str = ""
    injected: bool = False
    error: str | None = None


class InterceptionEnded(UsageEvent, frozen=True, kw_only=True, tag="usage.ended"):
    status: Literal["ok", "error", "cancelled", "interrupted"]  # interrupted: the client went away mid-request
    status_code: int = 0
    duration_ms: int = 0
    error: str | None = None
    # the pool key that finally answered (after failover), for centralised calls; the started event may
    # have gone out before any key answered
    key_id: str | None = None
    key_hint: str = ""


AnyUsageEvent = InterceptionStarted | TokenUsage | PromptRecorded | ToolUsage | InterceptionEnded


class UsageRecord(Message, frozen=True, kw_only=True, tag="usage.record"):
    """The events of one or more requests that are ready together, as one message (``aigw.usage.record``).

    A finished request's started, prompt, token, tool and ended events cost the bus, the stream and the
    budget consumer one message instead of five; requests the gateway publishes at the same moment share one. Each event keeps its own ``event_id`` (the budget's
    idempotence key); ``record_id`` is the message's ``Nats-Msg-Id``.
    """

    record_id: str
    events: list[AnyUsageEvent]


AnyUsageMessage = AnyUsageEvent | UsageRecord

# --------------------------------------------------------------------- budget


BudgetScope = Literal["user", "group"]
SubjectKey = tuple[BudgetScope, str]  # (scope, subject id): whose budget or limits


class BudgetState(Message, frozen=True, kw_only=True, tag="budget.state"):
    signed_by: ClassVar[str] = "budget"
    scope: BudgetScope
    subject_id: str
    name: str = ""
    blocked: bool
    spent_micros: int
    reserved_micros: int = 0
    limit_micros: int
    period_end: float
    period_start: float = 0.0
    deleted: bool = False  # the budget was removed: gateways stop enforcing it


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    """Price of one model in micro-USD per million tokens; ``model`` ``*`` is the fallback for unknown models."""

    model: str
    input_per_mtok_micros: int
    output_per_mtok_micros: int
    cache_read_per_mtok_micros: int
    cache_write_per_mtok_micros: int


class BudgetPrices(Message, frozen=True, kw_only=True, tag="budget.prices"):
    """The whole price table, published by the budget service whenever it changes."""

    signed_by: ClassVar[str] = "budget"
    prices: list[ModelPrice] = []


class BudgetSnapshotRequest(Message, frozen=True, kw_only=True, tag="budget.snapshot.request"):
    answered_by: ClassVar[str] = "budget"


class BudgetSnapshot(Message, frozen=True, kw_only=True, tag="budget.snapshot"):
    signed_by: ClassVar[str] = "budget"
    states: list[BudgetState] = []
    prices: list[ModelPrice] | None = None  # None: the service could not read prices (keep what you have)
    lease_ttl: float = 60.0


class LeaseItem(msgspec.Struct, frozen=True, kw_only=True):
    """One budget in a lease request: what this gateway used, holds in flight, and needs."""

    scope: BudgetScope
    subject_id: str
    period_start: float
    seq: int
    consumed_micros: int  # real cost of requests settled under this lease (cumulative)
    inflight_micros: int  # reservations of requests still running
    target_micros: int  # the cumulative grant wanted; below the current grant releases headroom
    need_micros: int = 0  # of the target, what requests are waiting for right now


class BudgetLeaseRequest(Message, frozen=True, kw_only=True, tag="budget.lease.request"):
    answered_by: ClassVar[str] = "budget"
    gateway_id: str
    items: list[LeaseItem]


class LeaseGrant(msgspec.Struct, frozen=True, kw_only=True):
    scope: BudgetScope
    subject_id: str
    seq: int
    found: bool = True  # False: no such budget (any more)
    period_start: float = 0.0
    period_end: float = 0.0
    granted_micros: int = 0  # cumulative grant of this gateway's lease in this period
    limit_micros: int = 0
    spent_micros: int = 0
    expires_in: float = 0.0  # seconds; the gateway must stop using the lease after this
    exhausted: bool = False  # the need cannot be met anywhere: refuse what does not fit
    retry_in: float | None = None  # other gateways were asked to release idle headroom: ask again after this
    name: str = ""


class BudgetLeaseReply(Message, frozen=True, kw_only=True, tag="budget.lease.reply"):
    signed_by: ClassVar[str] = "budget"
    grants: list[LeaseGrant] = []
    error: str | None = None


class BudgetReclaim(Message, frozen=True, kw_only=True, tag="budget.reclaim"):
    """Gateways holding idle headroom of this budget should hand it back (another one is waiting)."""

    signed_by: ClassVar[str] = "budget"
    scope: BudgetScope
    subject_id: str
    period_start: float
    requester: str


# --------------------------------------------------------------------- rate and concurrency limits


class LimitsState(Message, frozen=True, kw_only=True, tag="limits.state"):
    """A user's or group's rate limits (budget API ``…/ai/limits``); None: that dimension is not limited."""

    signed_by: ClassVar[str] = "budget"

    scope: BudgetScope
    subject_id: str
    name: str = ""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    deleted: bool = False  # the limits were removed: gateways stop enforcing them


class LimitsSnapshotRequest(Message, frozen=True, kw_only=True, tag="limits.snapshot.request"):
    answered_by: ClassVar[str] = "budget"


class LimitsSnapshot(Message, frozen=True, kw_only=True, tag="limits.snapshot"):
    signed_by: ClassVar[str] = "budget"
    states: list[LimitsState] | None = None  # None: the service could not read them (keep what you have)


class LimitLeaseItem(msgspec.Struct, frozen=True, kw_only=True):
    """One limited subject in a limit lease request: this gateway's use of the current window and what it wants.

    ``window`` is the wall-clock minute (epoch seconds // 60). Request and token grants are cumulative for the
    window; slots (concurrency) are held across windows until released or expired.
    """

    scope: BudgetScope
    subject_id: str
    window: int
    seq: int
    requests_used: int = 0
    requests_want: int = 0
    tokens_used: int = 0
    tokens_want: int = 0
    inflight: int = 0
    slots_want: int = 0


class LimitLeaseRequest(Message, frozen=True, kw_only=True, tag="limits.lease.request"):
    answered_by: ClassVar[str] = "budget"
    gateway_id: str
    items: list[LimitLeaseItem]


class LimitGrant(msgspec.Struct, frozen=True, kw_only=True):
    scope: BudgetScope
    subject_id: str
    window: int
    seq: int
    found: bool = True  # False: the subject has no limits (any more)
    requests: int = 0  # cumulative grant for the window
    tokens: int = 0  # cumulative grant for the window
    slots: int = 0
    slots_ttl: float = 0.0  # seconds the slots are held without renewal
    requests_full: bool = False  # the window's requests are all granted elsewhere: refuse until it ends
    tokens_full: bool = False
    slots_full: bool = False
    retry_in: float | None = None  # other gateways hold unused grants and were asked to hand them back
    limits: LimitsState | None = None


class LimitLeaseReply(Message, frozen=True, kw_only=True, tag="limits.lease.reply"):
    signed_by: ClassVar[str] = "budget"
    grants: list[LimitGrant] = []
    error: str | None = None


class LimitReclaim(Message, frozen=True, kw_only=True, tag="limits.reclaim"):
    """Gateways holding unused grants or slots of this subject should hand them back (another one is waiting)."""

    signed_by: ClassVar[str] = "budget"

    scope: BudgetScope
    subject_id: str
    window: int
    requester: str


# --------------------------------------------------------------------- signed storage


class SignedEntry(Message, frozen=True, kw_only=True, tag="signed"):
    """A signed value in a JetStream KV bucket (KV entries carry no headers): ``payload`` is the
    message's exact JSON, ``sig`` its signer's Ed25519 signature over bucket.key and ``ts``."""

    signer: str
    ts: int  # epoch milliseconds
    sig: str
    payload: msgspec.Raw


# --------------------------------------------------------------------- chat


class ChatEvent(Message, frozen=True, kw_only=True, tag="chat.event"):
    chat_id: str
    event: str  # snapshot | status | message_delta | message | error
    data: msgspec.Raw
    origin: str = ""  # replica id, so a replica skips its own echo


ALL_MESSAGES: tuple[type[Message], ...] = (
    BusErrorReply,
    ProvidersChanged,
    SnapshotRequest,
    RegistrySnapshot,
    AuthVerifyRequest,
    AuthVerifyReply,
    AuthRevoked,
    DirectoryLookup,
    DirectoryReply,
    DirectoryChanged,
    AuditRecord,
    AuditAck,
    KeyMarked,
    KeyState,
    KeyReport,
    KeysExhausted,
    InterceptionStarted,
    TokenUsage,
    PromptRecorded,
    ToolUsage,
    InterceptionEnded,
    UsageRecord,
    BudgetState,
    BudgetPrices,
    BudgetSnapshotRequest,
    BudgetSnapshot,
    BudgetLeaseRequest,
    BudgetLeaseReply,
    BudgetReclaim,
    LimitsState,
    LimitsSnapshotRequest,
    LimitsSnapshot,
    LimitLeaseRequest,
    LimitLeaseReply,
    LimitReclaim,
    SignedEntry,
    ChatEvent,
)
