-- chatd: interrupting a running turn, the partial reply, and per-chat summaries.

-- A turn an interrupt asked to stop: its runner (on any replica) stops it and keeps the partial reply.
ALTER TABLE turns ADD COLUMN interrupt_requested boolean NOT NULL DEFAULT false;
ALTER TABLE turns DROP CONSTRAINT turns_status_check;
ALTER TABLE turns ADD CONSTRAINT turns_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'interrupted'));
-- the reply streamed so far (flushed by the runner every few hundred ms), so a client that connects mid-turn
-- to any replica gets it in its snapshot
ALTER TABLE turns ADD COLUMN partial_message_id uuid;
ALTER TABLE turns ADD COLUMN partial_text text;

-- an assistant message cut short by an interrupt
ALTER TABLE messages ADD COLUMN interrupted boolean NOT NULL DEFAULT false;

-- false: no one-line summary is generated for this chat's turns
ALTER TABLE chats ADD COLUMN summarize boolean NOT NULL DEFAULT true;
