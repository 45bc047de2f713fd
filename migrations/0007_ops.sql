-- The GitHub container registry's webhook receiver stores events with source 'github'.
ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS webhook_events_source_check;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_source_check
    CHECK (source IN ('registry', 'dockerhub', 'harbor', 'quay', 'build', 'github'));
