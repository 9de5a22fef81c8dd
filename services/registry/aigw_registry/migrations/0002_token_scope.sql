-- Tokens carry a scope: "gateway" (LLM routes only) or "admin" (also the control-plane APIs the user's
-- roles allow). Tokens issued before scopes existed could do everything, so they keep "admin"; new rows
-- always name their scope (the API defaults to "gateway").
ALTER TABLE api_tokens ADD COLUMN scope text NOT NULL DEFAULT 'admin' CHECK (scope IN ('gateway', 'admin'));
ALTER TABLE api_tokens ALTER COLUMN scope DROP DEFAULT;

-- The bootstrap owner is created at most once per database: once an owner has existed, revoking the
-- bootstrap token is final, whatever AIGW_BOOTSTRAP_TOKEN says at the next start.
ALTER TABLE state ADD COLUMN bootstrapped boolean NOT NULL DEFAULT false;
UPDATE state SET bootstrapped = EXISTS (SELECT 1 FROM users WHERE 'owner' = ANY(roles));
