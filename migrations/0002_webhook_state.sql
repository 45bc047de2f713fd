-- The webhook path: proof of access, build ids, the sweep's per-event backoff.
-- Functions and triggers (refresh_image_state in PL/pgSQL) come from schema.sql, which
-- `registry-sync migrate` applies after the migrations.

-- SPEC §1: webhook events apply only to images whose registry accepted their credentials
-- (the polling path's migration adds the same column; IF NOT EXISTS makes either order work).
ALTER TABLE images ADD COLUMN IF NOT EXISTS access_proven boolean NOT NULL DEFAULT false;
-- Images on the service's own registry were created for the account that pushed: proven.
UPDATE images SET access_proven = true
 WHERE NOT access_proven
   AND registry_id IN (SELECT id FROM registries WHERE is_tutum_registry);

-- Build events per build id only move forward; builds are ordered by first sight.
ALTER TABLE tags ADD COLUMN IF NOT EXISTS build_id text;
ALTER TABLE tags ADD COLUMN IF NOT EXISTS build_event_at timestamptz;
-- Tags left Building by release 1 time out from their last write.
UPDATE tags SET build_event_at = updated_at WHERE state = 'Building' AND build_event_at IS NULL;

ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS build_id text;
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS sweeps integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS webhook_events_builds_idx ON webhook_events (repository, host, build_id, received_at)
    WHERE build_id IS NOT NULL;
