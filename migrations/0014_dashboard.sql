-- The dashboard's images page (newest build first, filtered by state) and fleet page
-- (failing images, leases held): indexes of the images table. Building them locks writes to
-- `images` for as long as it takes (seconds at a million images).
CREATE INDEX IF NOT EXISTS images_owner_state_built_idx
    ON images ((COALESCE(owner_id, 0)), state, (COALESCE(last_build_date, '-infinity'::timestamptz)) DESC, id DESC);
CREATE INDEX IF NOT EXISTS images_owner_state_name_idx
    ON images ((COALESCE(owner_id, 0)), state, name COLLATE "C");
CREATE INDEX IF NOT EXISTS images_failing_idx ON images (sync_error_at DESC) WHERE sync_error IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_leased_idx ON images (lease_owner) WHERE lease_owner IS NOT NULL;
