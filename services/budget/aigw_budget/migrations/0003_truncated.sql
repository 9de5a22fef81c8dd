-- Text the gateway cut to size before recording (AIGW_RECORD_PROMPT_BYTES, the NATS max_payload):
-- the stored prompt or tool arguments are a prefix, cut on a UTF-8 boundary.
ALTER TABLE prompts ADD COLUMN truncated boolean NOT NULL DEFAULT false;
ALTER TABLE tool_usages ADD COLUMN truncated boolean NOT NULL DEFAULT false;
ALTER TABLE interceptions ADD COLUMN prompt_truncated boolean NOT NULL DEFAULT false;
