-- Build states polled from build APIs (Quay): the image's write-only build token, and the
-- table that orders builds by when the database first saw their id, filled from the build
-- webhooks received so far (their order used to be read from webhook_events alone).
-- (build_polls is new and comes with schema.sql, re-applied after migrations.)
ALTER TABLE images ADD COLUMN IF NOT EXISTS build_token bytea;
CREATE TABLE IF NOT EXISTS builds (
    id             bigserial   PRIMARY KEY,
    host           text        NOT NULL,
    repository     text        NOT NULL,
    build_id       text        NOT NULL,
    account_id     bigint      REFERENCES accounts (id) ON DELETE CASCADE,
    first_seen_at  timestamptz NOT NULL,
    ended_at       timestamptz,
    CONSTRAINT builds_key UNIQUE NULLS NOT DISTINCT (host, repository, build_id, account_id)
);
CREATE INDEX IF NOT EXISTS builds_first_seen_idx ON builds (first_seen_at);
INSERT INTO builds (host, repository, build_id, account_id, first_seen_at, ended_at)
SELECT host, repository, build_id, account_id, min(received_at),
       min(occurred_at) FILTER (WHERE build_state IN ('Success', 'Failed'))
  FROM webhook_events
 WHERE build_id IS NOT NULL AND kind = 'build'
 GROUP BY host, repository, build_id, account_id
ON CONFLICT ON CONSTRAINT builds_key DO NOTHING;
-- Builds are ordered by `builds` now, not by the webhook events of their id.
DROP INDEX IF EXISTS webhook_events_builds_idx;
-- A Quay build_cancelled webhook is `ended` (the tag shows what the registry has), as the
-- build API's `cancelled` phase is.
ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS webhook_events_build_state_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_build_state_check
    CHECK (build_state IS NULL OR build_state IN ('Building', 'Success', 'Failed', 'ended'));
