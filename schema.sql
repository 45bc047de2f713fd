-- registry-sync: the whole current schema (a snapshot: what a fresh database gets).
-- Idempotent: applying it to a database that already has it changes nothing and loses
-- nothing (every statement is IF NOT EXISTS / CREATE OR REPLACE). It never changes an
-- existing table: every change to a table, column, constraint or index that an older
-- database lacks also goes into a numbered file in migrations/ (migrations/README.md).
-- `registry-sync migrate` runs those, then this file, under an advisory lock.

CREATE TABLE IF NOT EXISTS accounts (
    id          bigserial   PRIMARY KEY,
    username    text        NOT NULL,
    is_admin    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_username_key UNIQUE (username),
    CONSTRAINT accounts_username_check CHECK (username ~ '^[a-z0-9][a-z0-9_.-]{0,63}$')
);

-- API keys are 256-bit random secrets, so a SHA-256 digest is a safe hash at rest; the
-- plain key is shown once by `create-account` and never stored.
CREATE TABLE IF NOT EXISTS api_keys (
    id          bigserial   PRIMARY KEY,
    account_id  bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key_hash    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX IF NOT EXISTS api_keys_account_idx ON api_keys (account_id);

CREATE TABLE IF NOT EXISTS registries (
    id                 bigserial PRIMARY KEY,
    host               text      NOT NULL,  -- as in image names: registry.local, 127.0.0.1:5000
    name               text      NOT NULL,
    icon_url           text,
    is_ssl             boolean   NOT NULL DEFAULT true,
    is_tutum_registry  boolean   NOT NULL DEFAULT false,
    CONSTRAINT registries_host_key UNIQUE (host)
);

CREATE TABLE IF NOT EXISTS images (
    id                  bigserial   PRIMARY KEY,
    name                text        NOT NULL,  -- as registered: ubuntu, tutum/hello-world, host/ns/repo
    owner_id            bigint      REFERENCES accounts (id) ON DELETE CASCADE,  -- NULL: shared catalog
    registry_id         bigint      NOT NULL REFERENCES registries (id) ON DELETE RESTRICT,
    repository          text        NOT NULL,  -- path on the registry: library/ubuntu, user1/image1
    description         text        NOT NULL DEFAULT '',
    icon_url            text,
    star_count          integer     NOT NULL DEFAULT 0,
    jumpstart           boolean     NOT NULL DEFAULT false,
    in_use              boolean     NOT NULL DEFAULT false,
    is_private_image    boolean     NOT NULL DEFAULT true,
    public_url          text        NOT NULL DEFAULT '',
    credentials         bytea,                 -- Fernet token of {"username","password"}
    -- aggregate of the tags, maintained only by refresh_image_state() below
    state               text        NOT NULL DEFAULT 'Empty',
    last_build_date     timestamptz,
    -- scheduling (SPEC §4): Postgres says what is due; a lease marks a claimed image
    next_sync_at        timestamptz NOT NULL DEFAULT now(),
    sync_requested_at   timestamptz,           -- a user/webhook asked for a sync at this time
    lease_owner         text,
    lease_until         timestamptz,
    last_synced_at      timestamptz,
    sync_error          text,
    sync_error_at       timestamptz,
    sync_failures       integer     NOT NULL DEFAULT 0,
    -- adaptive schedule (worker/schedule.py): this image's poll interval in seconds (NULL:
    -- SYNC_INTERVAL_SECONDS), and the last time the API served it (written in batches)
    sync_interval       double precision,
    read_at             timestamptz,
    -- which tags are synced (core/tag_policy.py): {"include", "exclude", "max_tags"}; NULL: default
    tag_policy          jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- proof of access (SPEC §1): the image's own credentials (or anonymous access) were
    -- last accepted by its registry for its repository. Set by the sync; cleared by a
    -- rejected sync and by new credentials. Webhook events apply only to such images.
    access_proven       boolean     NOT NULL DEFAULT false,
    tags_cut_at         integer,               -- the tag list was cut to this many at the last sync
    CONSTRAINT images_owner_name_key UNIQUE NULLS NOT DISTINCT (owner_id, name),
    CONSTRAINT images_state_check CHECK (state IN ('Empty', 'Success', 'Building', 'Failed'))
);
CREATE INDEX IF NOT EXISTS images_name_idx ON images (name COLLATE "C");
CREATE INDEX IF NOT EXISTS images_registry_idx ON images (registry_id);
CREATE INDEX IF NOT EXISTS images_due_idx ON images (next_sync_at);

-- One row per image config: every tag pointing at the same config digest shares it.
-- Content-addressed, so a row never changes once written.
CREATE TABLE IF NOT EXISTS layers (
    config_digest  text        PRIMARY KEY,  -- sha256:<hex>; docker_id is the hex
    author         text        NOT NULL DEFAULT '',
    created        timestamptz,              -- NULL when missing or a reproducible-build placeholder
    entrypoint     text        NOT NULL DEFAULT '',
    run_command    text        NOT NULL DEFAULT '',
    envvars        jsonb       NOT NULL DEFAULT '[]',
    labels         jsonb       NOT NULL DEFAULT '[]',
    ports          jsonb       NOT NULL DEFAULT '[]',
    volumes        jsonb       NOT NULL DEFAULT '[]',
    fetched_at     timestamptz NOT NULL DEFAULT now(),
    orphaned_at    timestamptz  -- since when no tag points at it (worker/retention.py)
);

CREATE TABLE IF NOT EXISTS tags (
    id               bigserial   PRIMARY KEY,
    image_id         bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    name             text        NOT NULL,
    state            text        NOT NULL DEFAULT 'Empty',
    buildable        boolean     NOT NULL DEFAULT false,
    manifest_digest  text,       -- what the tag points at (a manifest or an index)
    platform_digest  text,       -- the chosen platform manifest when manifest_digest is an index
    config_digest    text        REFERENCES layers (config_digest) ON DELETE SET NULL,
    build_date       timestamptz, -- date of the last successful build (config created or push time)
    pushed_at        timestamptz,
    state_at         timestamptz, -- time of the event that set `state`: older events never win
    sync_note        text,        -- e.g. no manifest for the configured platform
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- the build whose events set `state` (a sender's build id; NULL: none), and when the
    -- database received the build event that set it (BUILD_TIMEOUT_SECONDS counts from there)
    build_id         text,
    build_event_at   timestamptz,
    -- why the last sync could not read the tag's manifest or config; its other columns
    -- keep the last good data
    sync_error       text,
    CONSTRAINT tags_image_name_key UNIQUE (image_id, name),
    CONSTRAINT tags_state_check CHECK (state IN ('Empty', 'Success', 'Building', 'Failed'))
);
CREATE INDEX IF NOT EXISTS tags_config_idx ON tags (config_digest);

-- Which registry repositories served a config blob or confirmed holding it (a HEAD with the
-- image's own credentials). Proof of access (SPEC §1): a tag points at a layer only when
-- its image's registry and repository are listed here for that config, so a manifest that
-- names another repository's config digest never reveals that layer. Later syncs read it to
-- skip the confirmation.
CREATE TABLE IF NOT EXISTS layer_sources (
    registry_id    bigint      NOT NULL REFERENCES registries (id) ON DELETE CASCADE,
    repository     text        NOT NULL,
    config_digest  text        NOT NULL REFERENCES layers (config_digest) ON DELETE CASCADE,
    confirmed_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT layer_sources_pkey PRIMARY KEY (registry_id, repository, config_digest)
);
CREATE INDEX IF NOT EXISTS layer_sources_config_idx ON layer_sources (config_digest);

CREATE TABLE IF NOT EXISTS categories (
    id    bigserial PRIMARY KEY,
    name  text      NOT NULL,
    CONSTRAINT categories_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS image_categories (
    image_id     bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    category_id  bigint NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
    CONSTRAINT image_categories_pkey PRIMARY KEY (image_id, category_id)
);
CREATE INDEX IF NOT EXISTS image_categories_category_idx ON image_categories (category_id);

-- The aggregate image state and last_build_date (SPEC §2), written once. Every write path
-- (poll, webhook, API) changes tags, and the statement triggers below call this, so the
-- rule cannot be bypassed or computed twice:
--   Building if any tag is Building; else Failed if any tag is Failed; else Success if any
--   tag is Success; else Empty. last_build_date: newest successful build date of its tags.
CREATE OR REPLACE FUNCTION refresh_image_state(image_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- The one lock order of every writer of tags: the image rows, by id. Every write path
    -- takes these locks itself before it writes tags (so this passes at once); a writer that
    -- did not still cannot compute from a state older than the writers it waits for here.
    PERFORM 1 FROM images WHERE id = ANY (image_ids) ORDER BY id FOR UPDATE;
    -- A new statement, so under READ COMMITTED a new snapshot: it sees every tag committed
    -- by the transactions the lock above waited for.
    UPDATE images AS i
       SET state = agg.state, last_build_date = agg.last_build_date, updated_at = now()
      FROM (
        SELECT im.id,
               CASE WHEN bool_or(t.state = 'Building') THEN 'Building'
                    WHEN bool_or(t.state = 'Failed')   THEN 'Failed'
                    WHEN bool_or(t.state = 'Success')  THEN 'Success'
                    ELSE 'Empty' END AS state,
               max(t.build_date) AS last_build_date
          FROM images AS im
          LEFT JOIN tags AS t ON t.image_id = im.id
         WHERE im.id = ANY (image_ids)
         GROUP BY im.id
      ) AS agg
     WHERE i.id = agg.id
       AND (i.state, i.last_build_date) IS DISTINCT FROM (agg.state, agg.last_build_date);
END;
$$;

CREATE OR REPLACE FUNCTION tags_refresh_image_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_image_state(ARRAY(SELECT DISTINCT image_id FROM changed_tags));
    RETURN NULL;
END;
$$;

-- Statement-level, so a sync that writes fifty tags recomputes each image once.
CREATE OR REPLACE TRIGGER tags_after_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS changed_tags
    FOR EACH STATEMENT EXECUTE FUNCTION tags_refresh_image_state();
CREATE OR REPLACE TRIGGER tags_after_update AFTER UPDATE ON tags
    REFERENCING NEW TABLE AS changed_tags
    FOR EACH STATEMENT EXECUTE FUNCTION tags_refresh_image_state();
CREATE OR REPLACE TRIGGER tags_after_delete AFTER DELETE ON tags
    REFERENCING OLD TABLE AS changed_tags
    FOR EACH STATEMENT EXECUTE FUNCTION tags_refresh_image_state();

-- ======================================================================================
-- Push webhooks: the durable inbox. Written by api/webhooks.py (before it answers the sender),
-- applied by worker/inbox.py, re-queued and purged by worker/sweep.py. An event is one change
-- named by a sender (core/webhooks.py normalizes every sender's format to these columns).
-- ======================================================================================
CREATE TABLE IF NOT EXISTS webhook_events (
    id            bigserial   PRIMARY KEY,
    source        text        NOT NULL,  -- the receiver: registry, dockerhub, harbor, quay, build, github
    dedupe_key    text        NOT NULL,  -- sender's event id, or a hash of the delivery's content
    kind          text        NOT NULL,
    host          text        NOT NULL,  -- registry host as in registries.host
    repository    text        NOT NULL,  -- as in images.repository
    tag           text,
    digest        text,
    build_state   text,
    occurred_at   timestamptz NOT NULL,  -- the sender's time (or received_at): orders events
    payload       jsonb       NOT NULL,  -- the sender's event, for the record
    status        text        NOT NULL DEFAULT 'pending',
    attempts      integer     NOT NULL DEFAULT 0,
    note          text,                  -- why ignored, or the last processing error
    received_at   timestamptz NOT NULL DEFAULT now(),
    queued_at     timestamptz NOT NULL DEFAULT now(),  -- last time it was sent to the queue
    processed_at  timestamptz,
    build_id      text,                  -- the sender's build id (Quay, the generic build event)
    sweeps        integer     NOT NULL DEFAULT 0,  -- times the sweep sent it again: each waits twice as long
    CONSTRAINT webhook_events_dedupe_key_key UNIQUE (dedupe_key),
    CONSTRAINT webhook_events_source_check
        CHECK (source IN ('registry', 'dockerhub', 'harbor', 'quay', 'build', 'github')),
    CONSTRAINT webhook_events_kind_check
        CHECK (kind IN ('push', 'delete_tag', 'delete_manifest', 'delete_repository', 'sync', 'build')),
    CONSTRAINT webhook_events_status_check
        CHECK (status IN ('pending', 'done', 'ignored', 'failed')),
    CONSTRAINT webhook_events_build_state_check
        CHECK (build_state IS NULL OR build_state IN ('Building', 'Success', 'Failed'))
);
-- the sweep: pending events by the time they were last queued
CREATE INDEX IF NOT EXISTS webhook_events_pending_idx ON webhook_events (queued_at)
    WHERE status = 'pending';
-- deletes are tombstones: a push older than a processed delete must not resurrect its tag
CREATE INDEX IF NOT EXISTS webhook_events_deletes_idx ON webhook_events (repository, host, occurred_at)
    WHERE kind IN ('delete_tag', 'delete_manifest', 'delete_repository');
-- builds are ordered by when the first event of their id arrived
CREATE INDEX IF NOT EXISTS webhook_events_builds_idx ON webhook_events (repository, host, build_id, received_at)
    WHERE build_id IS NOT NULL;
-- retention of processed events
CREATE INDEX IF NOT EXISTS webhook_events_processed_idx ON webhook_events (processed_at)
    WHERE status IN ('done', 'ignored');
-- events name (registry host, repository): find the images they are about
CREATE INDEX IF NOT EXISTS images_repository_idx ON images (repository);
-- ======================================================================== end of push webhooks

-- ============================================================================================
-- Freshness (issue 5): Docker Hub inspections and the events stream. Owner: api/events.py,
-- api/inspect.py, worker/hub_lookup.py.
-- ============================================================================================

-- The last lookup of a Docker Hub name that was not in the catalog (GET of an unknown Hub
-- name). The API inserts the request; the worker writes the outcome and notifies
-- `registry_sync_inspect` in the same transaction. A recent 'missing' answers 404 without
-- asking the hub again.
CREATE TABLE IF NOT EXISTS hub_inspections (
    name          text        PRIMARY KEY,  -- canonical API name: ubuntu, tutum/mysql
    requested_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text,                     -- NULL while the lookup runs
    error         text,
    CONSTRAINT hub_inspections_outcome_check CHECK (outcome IN ('found', 'missing', 'failed'))
);

-- Events stream (SPEC §5): NOTIFY from the transaction that changes an image or a tag, so a
-- listener hears only committed changes, in commit order. Statement-level with transition
-- tables: one trigger call per statement, and only client-visible changes are sent (a sync
-- moves leases on `images` all the time; those stay silent). Payload: compact JSON that the
-- API turns into the wire message; `owner` decides who may see it. Deleting an image sends
-- one image delete, not one per tag (its tags' rows are gone with it).
CREATE OR REPLACE FUNCTION images_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'create', 'owner', n.owner_id, 'name', n.name,
            'state', n.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM new_rows AS n;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'update', 'owner', n.owner_id, 'name', n.name,
            'state', n.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
         WHERE (o.name, o.owner_id, o.registry_id, o.description, o.icon_url, o.state, o.star_count,
                o.jumpstart, o.in_use, o.is_private_image, o.public_url, o.last_build_date)
               IS DISTINCT FROM
               (n.name, n.owner_id, n.registry_id, n.description, n.icon_url, n.state, n.star_count,
                n.jumpstart, n.in_use, n.is_private_image, n.public_url, n.last_build_date);
    ELSE
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'delete', 'owner', o.owner_id, 'name', o.name,
            'state', o.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM old_rows AS o;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER images_events_insert AFTER INSERT ON images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_notify_events();
CREATE OR REPLACE TRIGGER images_events_update AFTER UPDATE ON images
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_notify_events();
CREATE OR REPLACE TRIGGER images_events_delete AFTER DELETE ON images
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_notify_events();

CREATE OR REPLACE FUNCTION tags_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'create', 'owner', i.owner_id, 'name', i.name,
            'tag', n.name, 'state', n.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM new_rows AS n JOIN images AS i ON i.id = n.image_id;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'update', 'owner', i.owner_id, 'name', i.name,
            'tag', n.name, 'state', n.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id JOIN images AS i ON i.id = n.image_id
         WHERE (o.name, o.state, o.buildable, o.manifest_digest, o.config_digest, o.build_date)
               IS DISTINCT FROM
               (n.name, n.state, n.buildable, n.manifest_digest, n.config_digest, n.build_date);
    ELSE
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'delete', 'owner', i.owner_id, 'name', i.name,
            'tag', o.name, 'state', o.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM old_rows AS o JOIN images AS i ON i.id = o.image_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER tags_events_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_notify_events();
CREATE OR REPLACE TRIGGER tags_events_update AFTER UPDATE ON tags
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_notify_events();
CREATE OR REPLACE TRIGGER tags_events_delete AFTER DELETE ON tags
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_notify_events();
-- ============================================================================================
-- End of the freshness section.
-- ============================================================================================

-- ============================================================================================
-- Polling at scale (worker/schedule.py, worker/tag_policy.py, worker/retention.py,
-- api/read_marks.py). Columns of existing tables come with migrations/0005_polling.sql.
-- ============================================================================================
CREATE INDEX IF NOT EXISTS layers_orphaned_idx ON layers (orphaned_at) WHERE orphaned_at IS NOT NULL;
-- "fed by webhooks": the last applied event of a repository
CREATE INDEX IF NOT EXISTS webhook_events_applied_idx ON webhook_events (host, repository, received_at)
    WHERE status = 'done';
CREATE INDEX IF NOT EXISTS hub_inspections_finished_idx ON hub_inspections (finished_at);

-- A layer pointed at again is no longer an orphan: retention measures its grace period from
-- the last time it lost its last tag, not from the first.
CREATE OR REPLACE FUNCTION tags_unorphan_layers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE layers SET orphaned_at = NULL
     WHERE orphaned_at IS NOT NULL
       AND config_digest IN (SELECT config_digest FROM changed_tags WHERE config_digest IS NOT NULL);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER tags_unorphan_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS changed_tags
    FOR EACH STATEMENT EXECUTE FUNCTION tags_unorphan_layers();
CREATE OR REPLACE TRIGGER tags_unorphan_update AFTER UPDATE ON tags
    REFERENCING NEW TABLE AS changed_tags
    FOR EACH STATEMENT EXECUTE FUNCTION tags_unorphan_layers();
-- ============================================================================================
-- End of the polling section.
-- ============================================================================================
