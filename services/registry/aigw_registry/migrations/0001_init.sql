-- The registry: providers, keys, identity, audit and the outbox. search_path is "registry".

-- One row; `revision` is bumped in the same transaction as every provider or
-- provider-key change, so a snapshot and the revision it reports are consistent.
CREATE TABLE state (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision  bigint  NOT NULL DEFAULT 0
);
INSERT INTO state (id, revision) VALUES (true, 0);

CREATE TABLE ai_providers (
    id               uuid        PRIMARY KEY,
    type             text        NOT NULL,
    name             text        NOT NULL,
    display_name     text        NOT NULL DEFAULT '',
    enabled          boolean     NOT NULL DEFAULT true,
    allow_byok       boolean     NOT NULL DEFAULT true,
    base_url         text        NOT NULL,
    settings_sealed  text,                      -- JSON object, sealed at rest
    settings_key_id  text,                      -- id of the encryption key that sealed it
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE UNIQUE INDEX ai_providers_live_name ON ai_providers (name) WHERE deleted_at IS NULL;
CREATE INDEX ai_providers_name ON ai_providers (name);

CREATE TABLE ai_provider_keys (
    id              uuid        PRIMARY KEY,
    provider_id     uuid        NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    position        integer     NOT NULL CHECK (position >= 0),  -- failover order, dense from 0
    api_key_sealed  text        NOT NULL,
    key_id          text        NOT NULL,
    hint            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_provider_keys_position UNIQUE (provider_id, position) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE users (
    id          uuid        PRIMARY KEY,
    username    text        NOT NULL,
    email       text,
    roles       text[]      NOT NULL CHECK (roles <@ ARRAY['owner', 'admin', 'member']::text[] AND cardinality(roles) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE UNIQUE INDEX users_live_username ON users (lower(username)) WHERE deleted_at IS NULL;

CREATE TABLE user_ai_provider_keys (
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider_id     uuid        NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    api_key_sealed  text        NOT NULL,
    key_id          text        NOT NULL,
    hint            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider_id)
);
CREATE INDEX user_ai_provider_keys_provider ON user_ai_provider_keys (provider_id);

CREATE TABLE groups (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX groups_name ON groups (lower(name));

CREATE TABLE group_members (
    group_id    uuid        NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE api_tokens (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text        NOT NULL DEFAULT '',
    token_hash  text        NOT NULL UNIQUE,   -- SHA-256 of the token; the token itself is never stored
    hint        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE audit_logs (
    id             bigserial   PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor_id       uuid,                        -- NULL: the system (seeding, bootstrap)
    actor_name     text        NOT NULL,
    action         text        NOT NULL,        -- e.g. provider.create
    resource_type  text        NOT NULL,
    resource_id    text        NOT NULL,
    before         jsonb,
    after          jsonb
);
CREATE INDEX audit_logs_resource ON audit_logs (resource_type, resource_id);

-- Events to publish after commit. A relay publishes unsent rows in id order and marks them sent.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL,          -- providers.changed | auth.revoked
    payload     bytea       NOT NULL,          -- the encoded bus message
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;
