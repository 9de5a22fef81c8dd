-- Rate and concurrency limits per user and per group (budget API …/ai/limits); NULL: not limited.
CREATE TABLE user_ai_limits (
    user_id             text PRIMARY KEY,
    requests_per_minute integer CHECK (requests_per_minute >= 0),
    tokens_per_minute   bigint CHECK (tokens_per_minute >= 0),
    concurrent_requests integer CHECK (concurrent_requests >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_ai_limits (
    group_id            text PRIMARY KEY,
    requests_per_minute integer CHECK (requests_per_minute >= 0),
    tokens_per_minute   bigint CHECK (tokens_per_minute >= 0),
    concurrent_requests integer CHECK (concurrent_requests >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- What each gateway replica was granted of one subject's one-minute window (see docs/limits.md).
CREATE TABLE limit_windows (
    scope           text NOT NULL,
    subject_id      text NOT NULL,
    window_start    bigint NOT NULL,          -- epoch minute
    gateway_id      text NOT NULL,
    requests        integer NOT NULL DEFAULT 0,
    tokens          bigint NOT NULL DEFAULT 0, -- max(granted, reported used)
    requests_used   integer NOT NULL DEFAULT 0, -- as last reported by the gateway
    tokens_used     bigint NOT NULL DEFAULT 0,
    seq             bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, subject_id, window_start, gateway_id)
);

-- Concurrency slots held by each gateway replica; a slot lease not renewed in time no longer counts.
CREATE TABLE limit_slots (
    scope       text NOT NULL,
    subject_id  text NOT NULL,
    gateway_id  text NOT NULL,
    slots       integer NOT NULL DEFAULT 0,
    inflight    integer NOT NULL DEFAULT 0,  -- as last reported by the gateway
    seq         bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, subject_id, gateway_id)
);
CREATE INDEX limit_slots_expires ON limit_slots (expires_at);
