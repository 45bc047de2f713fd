-- Receivers with a scope: an event remembers the account whose receiver it came through
-- (NULL: an operator receiver). The `receivers` table itself is new: schema.sql creates it.
ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS account_id bigint REFERENCES accounts (id) ON DELETE CASCADE;
CREATE INDEX IF NOT EXISTS webhook_events_account_idx ON webhook_events (account_id)
    WHERE account_id IS NOT NULL;
