-- budget: the system of record for what the gateway did and what it cost.

-- One row per interception, created by whichever of its events arrives first
-- (events may arrive out of order); started_at stays NULL until the started event.
CREATE TABLE interceptions (
    id                 text PRIMARY KEY,
    occurred_at        timestamptz NOT NULL,          -- started_at when known, else the first event's time
    started_at         timestamptz,
    ended_at           timestamptz,
    user_id            text,
    group_ids          text[] NOT NULL DEFAULT '{}',
    token_id           text,
    gateway_id         text NOT NULL DEFAULT '',
    provider_id        text,
    provider_name      text NOT NULL DEFAULT '',
    provider_type      text NOT NULL DEFAULT '',
    endpoint           text NOT NULL DEFAULT '',
    model              text NOT NULL DEFAULT '',
    client             text NOT NULL DEFAULT 'unknown',
    session_id         text,
    credential_kind    text NOT NULL DEFAULT 'centralised',
    credential_hint    text NOT NULL DEFAULT '',
    key_id             text,
    streaming          boolean NOT NULL DEFAULT false,
    reservation_micros bigint NOT NULL DEFAULT 0,
    metadata           jsonb NOT NULL DEFAULT '{}',
    status             text,                          -- NULL while running; ok | error | cancelled
    status_code        integer,
    duration_ms        integer,
    error              text,
    prompt             text,
    prompt_at          double precision,
    input_tokens       bigint NOT NULL DEFAULT 0,
    output_tokens      bigint NOT NULL DEFAULT 0,
    cache_read_tokens  bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens   bigint NOT NULL DEFAULT 0,
    cost_micros        bigint NOT NULL DEFAULT 0,
    attributed_micros  bigint NOT NULL DEFAULT 0,     -- the part of cost_micros already added to spend
    unpriced           boolean NOT NULL DEFAULT false -- some token usage had no price
);
CREATE INDEX interceptions_occurred ON interceptions (occurred_at DESC, id DESC);
CREATE INDEX interceptions_user ON interceptions (user_id, occurred_at DESC);
CREATE INDEX interceptions_session ON interceptions (session_id) WHERE session_id IS NOT NULL;

-- Every event applied, by its id: a replay finds its id here and changes nothing.
CREATE TABLE processed_events (
    event_id        text PRIMARY KEY,
    interception_id text NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_events_interception ON processed_events (interception_id);

CREATE TABLE token_usages (
    event_id           text PRIMARY KEY,
    interception_id    text NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    at                 timestamptz NOT NULL,
    model              text NOT NULL,
    input_tokens       bigint NOT NULL,
    output_tokens      bigint NOT NULL,
    cache_read_tokens  bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens   bigint NOT NULL,
    cost_micros        bigint NOT NULL,
    priced             boolean NOT NULL
);
CREATE INDEX token_usages_interception ON token_usages (interception_id);

CREATE TABLE prompts (
    event_id        text PRIMARY KEY,
    interception_id text NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    prompt          text NOT NULL
);
CREATE INDEX prompts_interception ON prompts (interception_id);

CREATE TABLE tool_usages (
    event_id        text PRIMARY KEY,
    interception_id text NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    name            text NOT NULL,
    call_id         text NOT NULL DEFAULT '',
    arguments       text NOT NULL DEFAULT '',
    injected        boolean NOT NULL DEFAULT false,
    error           text
);
CREATE INDEX tool_usages_interception ON tool_usages (interception_id, at);

-- Spend per user and per group per calendar month (UTC), kept for every subject so a budget
-- created mid-month knows what was already spent. Updated in the same transaction as the cost.
CREATE TABLE spend (
    scope         text NOT NULL CHECK (scope IN ('user', 'group')),
    subject_id    text NOT NULL,
    period_start  timestamptz NOT NULL,
    spent_micros  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, subject_id, period_start)
);

CREATE TABLE group_ai_budgets (
    group_id           text PRIMARY KEY,
    spend_limit_micros bigint NOT NULL CHECK (spend_limit_micros >= 0),
    period             text NOT NULL DEFAULT 'month' CHECK (period = 'month'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_ai_budgets (
    user_id            text PRIMARY KEY,
    spend_limit_micros bigint NOT NULL CHECK (spend_limit_micros >= 0),
    period             text NOT NULL DEFAULT 'month' CHECK (period = 'month'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Headroom granted to one gateway replica for one budget and period (see docs/architecture.md, Budgets).
CREATE TABLE leases (
    scope           text NOT NULL,
    subject_id      text NOT NULL,
    period_start    timestamptz NOT NULL,
    gateway_id      text NOT NULL,
    granted_micros  bigint NOT NULL DEFAULT 0,
    consumed_micros bigint NOT NULL DEFAULT 0,   -- as last reported by the gateway
    inflight_micros bigint NOT NULL DEFAULT 0,   -- as last reported by the gateway
    recorded_micros bigint NOT NULL DEFAULT 0,   -- cost of its interceptions recorded here
    seq             bigint NOT NULL DEFAULT 0,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, subject_id, period_start, gateway_id)
);
CREATE INDEX leases_expires ON leases (expires_at);

CREATE TABLE prices (
    model                      text PRIMARY KEY,
    input_per_mtok_micros      bigint NOT NULL CHECK (input_per_mtok_micros >= 0),
    output_per_mtok_micros     bigint NOT NULL CHECK (output_per_mtok_micros >= 0),
    cache_read_per_mtok_micros bigint NOT NULL CHECK (cache_read_per_mtok_micros >= 0),
    cache_write_per_mtok_micros bigint NOT NULL CHECK (cache_write_per_mtok_micros >= 0),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- Budget and price changes (who, what, before, after). The registry's audit log lives in its own
-- schema; the budget service keeps its own so it never writes another service's tables.
CREATE TABLE audit_logs (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_logs_at ON audit_logs (at DESC);
