-- Proof by content (SPEC §1): a repository holds a config blob only when it served the bytes
-- and they hash to the digest. Until now a `layer_sources` row was also written when the
-- repository only answered HEAD 200 for a blob cached from another repository, and nothing
-- recorded which rows came from a GET: every existing row is kept but marked unproven. The
-- next sync of a tag that points at such a config fetches that blob once (its manifest is
-- not fetched again: a Docker Hub pull each) and either proves the row or takes the config
-- off the tag. The default stays false, so a worker of the previous release that still runs
-- during the upgrade cannot write a row that counts.
ALTER TABLE layer_sources ADD COLUMN IF NOT EXISTS proven_by_content boolean NOT NULL DEFAULT false;
