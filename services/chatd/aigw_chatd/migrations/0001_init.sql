-- chatd: chats for in-house agents. Applied with search_path = chatd.

CREATE TABLE model_configs (
    id            uuid PRIMARY KEY,
    display_name  text NOT NULL,
    provider_id   text NOT NULL,
    -- last known provider row from the registry snapshot: a failed refresh degrades to it
    provider_name text NOT NULL,
    provider_type text NOT NULL,
    base_url      text NOT NULL DEFAULT '',
    allow_byok    boolean NOT NULL DEFAULT true,
    model         text NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,  -- true only while the provider is enabled
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_configs_provider ON model_configs (provider_id);

CREATE TABLE chats (
    id                uuid PRIMARY KEY,
    owner_id          text NOT NULL,
    model_config_id   uuid NOT NULL REFERENCES model_configs (id),
    title             text NOT NULL DEFAULT '',
    status            text NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'running', 'error')),
    archived          boolean NOT NULL DEFAULT false,
    last_turn_summary text,
    last_turn_seq     bigint NOT NULL DEFAULT 0,  -- seq of the newest finished turn: a stale summary loses
    last_error        jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chats_owner_newest ON chats (owner_id, created_at DESC, id DESC);

CREATE TABLE turns (
    id                   uuid PRIMARY KEY,
    chat_id              uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq                  bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_message_id      uuid NOT NULL UNIQUE,
    content              text NOT NULL,       -- the user message as typed
    skill_name           text,
    instructions         text,                -- the skill's content when the message was posted
    user_id              text NOT NULL,
    -- the token that initiated the turn: id + hash for the record, sealed (at rest, aad = turn id)
    -- only while the turn may still run; wiped when it ends. Never clear text.
    token_id             text NOT NULL,
    token_hash           text NOT NULL,
    token_sealed         text,
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts             integer NOT NULL DEFAULT 0,
    assistant_message_id uuid,
    error                jsonb,
    runner               text,                -- replica running it
    lease_until          timestamptz,         -- heartbeat; an expired lease is requeued by any replica
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    ended_at             timestamptz
);
CREATE INDEX turns_chat_status ON turns (chat_id, status, seq);
CREATE UNIQUE INDEX turns_one_running_per_chat ON turns (chat_id) WHERE status = 'running';
CREATE INDEX turns_running_lease ON turns (lease_until) WHERE status = 'running';

CREATE TABLE messages (
    id         uuid PRIMARY KEY,
    chat_id    uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    turn_id    uuid,
    role       text NOT NULL CHECK (role IN ('user', 'assistant')),
    content    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_chat_seq ON messages (chat_id, seq);

CREATE TABLE skills (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL,
    username    text NOT NULL DEFAULT '',
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);
CREATE INDEX skills_username ON skills (username);

CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor_id       text,              -- null: the system (a user deletion event)
    action         text NOT NULL,     -- skill.create | skill.update | skill.delete | skill.purge | model_config.create
    target_user_id text,
    target         text,
    detail         jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- the registry revision the model configs were last synced to: replicas apply snapshots out of
-- order, and an older snapshot must never undo a newer one
CREATE TABLE registry_state (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision bigint NOT NULL
);
INSERT INTO registry_state (revision) VALUES (-1);
