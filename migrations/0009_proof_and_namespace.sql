-- Proof by content (SPEC §1): a repository holds a config blob only when it served the bytes
-- and they hash to the digest. Until now a `layer_sources` row was also written when the
-- repository only answered HEAD 200 for a blob cached from another repository, and nothing
-- recorded which rows came from a GET: every existing row is kept but marked unproven. The
-- next sync of a tag that points at such a config fetches that blob once (its manifest is
-- not fetched again: a Docker Hub pull each) and either proves the row or takes the config
-- off the tag. The default stays false, so a worker of the previous release that still runs
-- during the upgrade cannot write a row that counts.
ALTER TABLE layer_sources ADD COLUMN IF NOT EXISTS proven_by_content boolean NOT NULL DEFAULT false;

-- The service's own registry belongs to its accounts by namespace (SPEC §1): the first path
-- component of a repository is its account's user name. An image an ordinary account
-- registered in another account's namespace was read with the service's own access: it
-- loses its proof of access (no more events) and the tags it read; its next sync is refused.
WITH squatted AS (
    SELECT i.id
      FROM images AS i
      JOIN registries AS r ON r.id = i.registry_id
      JOIN accounts AS a ON a.id = i.owner_id
     WHERE r.is_tutum_registry AND NOT a.is_admin
       AND split_part(i.repository, '/', 1) <> a.username
), unproven AS (
    UPDATE images AS i SET access_proven = false
      FROM squatted AS s WHERE i.id = s.id AND i.access_proven
)
DELETE FROM tags AS t USING squatted AS s WHERE t.image_id = s.id;
