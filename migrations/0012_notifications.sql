-- Tag history and outgoing notifications: the tables are new (schema.sql creates them); the
-- images' expected-immutable tag globs are a new column of an existing table.
ALTER TABLE images ADD COLUMN IF NOT EXISTS immutable_tags text[] NOT NULL DEFAULT '{}';
