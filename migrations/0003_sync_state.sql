-- The polling path's state (release 2): per-tag sync problems, the tag-list cap, proof of
-- access to a repository, and which repositories served or confirmed each config blob.

ALTER TABLE images ADD COLUMN IF NOT EXISTS access_proven boolean NOT NULL DEFAULT false;
ALTER TABLE images ADD COLUMN IF NOT EXISTS tags_cut_at integer;
ALTER TABLE tags ADD COLUMN IF NOT EXISTS sync_error text;

CREATE TABLE IF NOT EXISTS layer_sources (
    registry_id    bigint      NOT NULL REFERENCES registries (id) ON DELETE CASCADE,
    repository     text        NOT NULL,
    config_digest  text        NOT NULL REFERENCES layers (config_digest) ON DELETE CASCADE,
    confirmed_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT layer_sources_pkey PRIMARY KEY (registry_id, repository, config_digest)
);
CREATE INDEX IF NOT EXISTS layer_sources_config_idx ON layer_sources (config_digest);

-- Access is proven where release 1's last sync succeeded with the credentials stored now
-- (no rejection since, and no credentials change since: a PATCH sets sync_requested_at),
-- and for the shared catalog (Docker Hub lookups) and the service's own registry.
UPDATE images AS i
   SET access_proven = true
  FROM registries AS r
 WHERE r.id = i.registry_id AND NOT i.access_proven
   AND (i.owner_id IS NULL OR r.is_tutum_registry
        OR (i.last_synced_at IS NOT NULL
            AND (i.sync_requested_at IS NULL OR i.sync_requested_at <= i.last_synced_at)
            AND (i.sync_error IS NULL
                 OR i.sync_error NOT SIMILAR TO '(RegistryAuthError|RepositoryNotFoundError|ForbiddenTargetError)%')));

-- Release 1 reused a cached config for any manifest that named its digest, whichever
-- repository served it. A config that tags of only one repository point at was fetched
-- from there: recorded as served. Where several repositories point at one config, nothing
-- says which one served it: those tags lose their config and note, so that the next sync
-- reads their manifest and config again (their layer shows null until then).
INSERT INTO layer_sources (registry_id, repository, config_digest)
SELECT DISTINCT i.registry_id, i.repository, t.config_digest
  FROM tags AS t JOIN images AS i ON i.id = t.image_id
 WHERE t.config_digest IN (
        SELECT t2.config_digest
          FROM tags AS t2 JOIN images AS i2 ON i2.id = t2.image_id
         WHERE t2.config_digest IS NOT NULL
         GROUP BY t2.config_digest
        HAVING count(DISTINCT (i2.registry_id, i2.repository)) = 1)
ON CONFLICT ON CONSTRAINT layer_sources_pkey DO NOTHING;

UPDATE tags AS t
   SET config_digest = NULL, sync_note = NULL
  FROM images AS i
 WHERE i.id = t.image_id AND t.config_digest IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM layer_sources AS s
                    WHERE s.registry_id = i.registry_id AND s.repository = i.repository
                      AND s.config_digest = t.config_digest);
