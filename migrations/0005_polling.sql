-- Polling at scale: adaptive schedules, tag policies, API read marks, layer retention.
-- (The trigger tags_unorphan_* and its function are in schema.sql, re-applied after migrations.)
ALTER TABLE images ADD COLUMN IF NOT EXISTS sync_interval double precision;
ALTER TABLE images ADD COLUMN IF NOT EXISTS read_at timestamptz;
ALTER TABLE images ADD COLUMN IF NOT EXISTS tag_policy jsonb;
ALTER TABLE layers ADD COLUMN IF NOT EXISTS orphaned_at timestamptz;
CREATE INDEX IF NOT EXISTS layers_orphaned_idx ON layers (orphaned_at) WHERE orphaned_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_events_applied_idx ON webhook_events (host, repository, received_at)
    WHERE status = 'done';
CREATE INDEX IF NOT EXISTS hub_inspections_finished_idx ON hub_inspections (finished_at);
