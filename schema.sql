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
    -- globs of tags expected never to move (`v*.*.*`): a move is flagged (tag_history.unexpected)
    immutable_tags      text[]      NOT NULL DEFAULT '{}',
    -- Fernet token of the application token that reads a private repository's builds from its
    -- build API (Quay: worker/quay_builds.py); write-only like `credentials`
    build_token         bytea,
    -- the repository has answered "not found" since then (worker/sync.py: retried like a
    -- transient failure for REPOSITORY_MISSING_GRACE_SECONDS); NULL once a sync finds it
    missing_since       timestamptz,
    CONSTRAINT images_owner_name_key UNIQUE NULLS NOT DISTINCT (owner_id, name),
    CONSTRAINT images_state_check CHECK (state IN ('Empty', 'Success', 'Building', 'Failed'))
);
CREATE INDEX IF NOT EXISTS images_name_idx ON images (name COLLATE "C");
CREATE INDEX IF NOT EXISTS images_registry_idx ON images (registry_id);
CREATE INDEX IF NOT EXISTS images_due_idx ON images (next_sync_at);

-- One row per image config: every tag pointing at the same config digest shares it.
-- Content-addressed, so a row never changes once written.
CREATE TABLE IF NOT EXISTS layers (
    config_digest  text        PRIMARY KEY,  -- sha256:<hex> (or sha512:); docker_id is the hex
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

-- Which registry repositories served a config blob with the image's own credentials, bytes
-- that hash to its digest (`proven_by_content`). Proof of access (SPEC §1): a tag points at a
-- layer only when its image's registry and repository are listed here for that config, so a
-- manifest that names another repository's config digest never reveals that layer. Later
-- syncs read it to skip the blob. A row without `proven_by_content` was written when a HEAD
-- answered 200 counted as proof: it proves nothing, and the next sync of a tag that points
-- at its config fetches the blob once (the default is false so that a worker of an older
-- release, still running during an upgrade, cannot write a row that counts).
CREATE TABLE IF NOT EXISTS layer_sources (
    registry_id        bigint      NOT NULL REFERENCES registries (id) ON DELETE CASCADE,
    repository         text        NOT NULL,
    config_digest      text        NOT NULL REFERENCES layers (config_digest) ON DELETE CASCADE,
    confirmed_at       timestamptz NOT NULL DEFAULT now(),
    proven_by_content  boolean     NOT NULL DEFAULT false,
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
    -- who sent it (SPEC §3): NULL, an operator receiver (a fact for the images of the host its
    -- secret is bound to); else the account whose receiver it came through (a fact for that
    -- account's images, a hint for the others)
    account_id    bigint      REFERENCES accounts (id) ON DELETE CASCADE,
    CONSTRAINT webhook_events_dedupe_key_key UNIQUE (dedupe_key),
    CONSTRAINT webhook_events_source_check
        CHECK (source IN ('registry', 'dockerhub', 'harbor', 'quay', 'build', 'github')),
    CONSTRAINT webhook_events_kind_check
        CHECK (kind IN ('push', 'delete_tag', 'delete_manifest', 'delete_repository', 'sync', 'build')),
    CONSTRAINT webhook_events_status_check
        CHECK (status IN ('pending', 'done', 'ignored', 'failed')),
    CONSTRAINT webhook_events_build_state_check
        CHECK (build_state IS NULL OR build_state IN ('Building', 'Success', 'Failed', 'ended'))
);
-- the sweep: pending events by the time they were last queued
CREATE INDEX IF NOT EXISTS webhook_events_pending_idx ON webhook_events (queued_at)
    WHERE status = 'pending';
-- deletes are tombstones: a push older than a processed delete must not resurrect its tag
CREATE INDEX IF NOT EXISTS webhook_events_deletes_idx ON webhook_events (repository, host, occurred_at)
    WHERE kind IN ('delete_tag', 'delete_manifest', 'delete_repository');
-- retention of processed events
CREATE INDEX IF NOT EXISTS webhook_events_processed_idx ON webhook_events (processed_at)
    WHERE status IN ('done', 'ignored');
-- an account's events go with it (ON DELETE CASCADE); operator events (NULL) are not indexed
CREATE INDEX IF NOT EXISTS webhook_events_account_idx ON webhook_events (account_id)
    WHERE account_id IS NOT NULL;
-- events name (registry host, repository): find the images they are about
CREATE INDEX IF NOT EXISTS images_repository_idx ON images (repository);

-- Account receivers (core/receivers.py): per account and sender kind, the public id its URL
-- carries and its secret, sealed with SECRET_KEY (the account reads it again; `registry-sync
-- rotate-secret` re-seals it). Rotation deletes and inserts: the old ones stop at once.
CREATE TABLE IF NOT EXISTS receivers (
    id          bigserial   PRIMARY KEY,
    account_id  bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    sender      text        NOT NULL,
    public_id   text        NOT NULL,  -- rcv_<random>: in the URL, not a secret
    secret      bytea       NOT NULL,  -- Fernet token of the secret
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT receivers_public_id_key UNIQUE (public_id),
    CONSTRAINT receivers_account_sender_key UNIQUE (account_id, sender),
    CONSTRAINT receivers_sender_check
        CHECK (sender IN ('registry', 'dockerhub', 'harbor', 'quay', 'build', 'github'))
);
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

-- A statement that changes more than 100 tags of one image (the sync of a big image) sends
-- one image update for it instead: subscribers re-read its tags. `image_state` lets the
-- stream fold several smaller statements into one image update too (api/stream.py); it is
-- the new state: triggers of one event fire in name order, tags_after_* before these.
CREATE OR REPLACE FUNCTION tags_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'create', 'owner', i.owner_id, 'name', i.name,
            'tag', n.name, 'state', n.state, 'image_state', i.state,
            'at', extract(epoch FROM clock_timestamp()))::text)
          FROM new_rows AS n JOIN images AS i ON i.id = n.image_id
         WHERE n.image_id IN (SELECT image_id FROM new_rows GROUP BY image_id HAVING count(*) <= 100);
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'update', 'owner', i.owner_id, 'name', i.name,
            'state', i.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM images AS i
         WHERE i.id IN (SELECT image_id FROM new_rows GROUP BY image_id HAVING count(*) > 100);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'update', 'owner', i.owner_id, 'name', i.name,
            'tag', c.name, 'state', c.state, 'image_state', i.state,
            'at', extract(epoch FROM clock_timestamp()))::text)
          FROM (SELECT n.image_id, n.name, n.state, count(*) OVER (PARTITION BY n.image_id) AS per_image
                  FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                 WHERE (o.name, o.state, o.buildable, o.manifest_digest, o.config_digest, o.build_date)
                       IS DISTINCT FROM
                       (n.name, n.state, n.buildable, n.manifest_digest, n.config_digest, n.build_date)) AS c
          JOIN images AS i ON i.id = c.image_id
         WHERE c.per_image <= 100;
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'update', 'owner', i.owner_id, 'name', i.name,
            'state', i.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM images AS i
         WHERE i.id IN (SELECT n.image_id FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                         WHERE (o.name, o.state, o.buildable, o.manifest_digest, o.config_digest, o.build_date)
                               IS DISTINCT FROM
                               (n.name, n.state, n.buildable, n.manifest_digest, n.config_digest, n.build_date)
                         GROUP BY n.image_id HAVING count(*) > 100);
    ELSE
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'imagetag', 'action', 'delete', 'owner', i.owner_id, 'name', i.name,
            'tag', o.name, 'state', o.state, 'image_state', i.state,
            'at', extract(epoch FROM clock_timestamp()))::text)
          FROM old_rows AS o JOIN images AS i ON i.id = o.image_id
         WHERE o.image_id IN (SELECT image_id FROM old_rows GROUP BY image_id HAVING count(*) <= 100);
        PERFORM pg_notify('registry_sync_events', json_build_object(
            'type', 'image', 'action', 'update', 'owner', i.owner_id, 'name', i.name,
            'state', i.state, 'at', extract(epoch FROM clock_timestamp()))::text)
          FROM images AS i
         WHERE i.id IN (SELECT image_id FROM old_rows GROUP BY image_id HAVING count(*) > 100);
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
-- Lists at scale: pages by keyset, exact counts kept as rows change. Owner: api/queries.py
-- (reads) and these triggers (writes). Every write path goes through them, so no code has
-- to remember anything.
--
-- A caller sees the shared catalog minus the catalog images it shadows (it registered the
-- same name itself) plus its own images. `list_entries` says, per image, which lists it is
-- in: scope 0 = the catalog, scope A = account A's own images, scope -A = a catalog image
-- hidden from A (counted with a minus sign, never listed); category_id 0 = the image itself,
-- else one entry per category. `list_counts` holds the number of entries per (scope,
-- category, name bucket, registry, jumpstart, is_private), with 0 meaning "any" for bucket
-- and registry, so the total of any filter combination is a sum over at most 12 rows.
-- Buckets are ranges of names (each starts at `lower`, C order) that let a deep `offset`
-- jump to the right range instead of reading every row before it.
-- ============================================================================================

CREATE TABLE IF NOT EXISTS list_buckets (
    id     integer GENERATED BY DEFAULT AS IDENTITY (START WITH 2) PRIMARY KEY,
    lower  text    COLLATE "C" NOT NULL,
    CONSTRAINT list_buckets_lower_key UNIQUE (lower)
);
-- the first bucket always exists: every name is >= ''
INSERT INTO list_buckets (id, lower) VALUES (1, '') ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS list_entries (
    image_id     bigint  NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    scope        bigint  NOT NULL,
    category_id  bigint  NOT NULL,
    name         text    COLLATE "C" NOT NULL,
    registry_id  bigint  NOT NULL,
    jumpstart    boolean NOT NULL,
    is_private   boolean NOT NULL,
    bucket       integer NOT NULL,
    CONSTRAINT list_entries_pkey PRIMARY KEY (image_id, scope, category_id)
);
-- one ordered range per (scope, category, jumpstart, is_private): a page merges at most 8
CREATE INDEX IF NOT EXISTS list_entries_page_idx
    ON list_entries (scope, category_id, jumpstart, is_private, name) INCLUDE (image_id);
CREATE INDEX IF NOT EXISTS list_entries_registry_idx
    ON list_entries (scope, category_id, registry_id, jumpstart, is_private, name) INCLUDE (image_id);

CREATE TABLE IF NOT EXISTS list_counts (
    scope        bigint  NOT NULL,
    category_id  bigint  NOT NULL,
    registry_id  bigint  NOT NULL,  -- 0: every registry
    bucket       integer NOT NULL,  -- 0: the whole list
    jumpstart    boolean NOT NULL,
    is_private   boolean NOT NULL,
    n            bigint  NOT NULL,
    CONSTRAINT list_counts_pkey PRIMARY KEY (scope, category_id, registry_id, bucket, jumpstart, is_private)
);

-- Tag pages by keyset in name order (the unique constraint's index has the database's collation).
CREATE INDEX IF NOT EXISTS tags_image_name_c_idx ON tags (image_id, name COLLATE "C");
-- the registries a caller sees: those with images in its scopes (whole-list counts by registry)
-- and the service's own
CREATE INDEX IF NOT EXISTS list_counts_registries_idx ON list_counts (scope, category_id, registry_id)
    WHERE bucket = 0;
CREATE INDEX IF NOT EXISTS registries_tutum_idx ON registries (id) WHERE is_tutum_registry;

-- Tags per image, for the total of a tag list (an image may have up to MAX_TAGS_PER_IMAGE).
-- Kept by the statement triggers below, apart from the state rule; every writer of an image's
-- tags holds that image already, so the row never makes two writers wait on each other.
CREATE TABLE IF NOT EXISTS tag_counts (
    image_id  bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    n         bigint NOT NULL,
    CONSTRAINT tag_counts_pkey PRIMARY KEY (image_id)
);

CREATE OR REPLACE FUNCTION tags_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO tag_counts AS c (image_id, n)
        SELECT image_id, count(*) FROM new_rows GROUP BY image_id ORDER BY image_id
        ON CONFLICT ON CONSTRAINT tag_counts_pkey DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'DELETE' THEN
        -- an image deleted with its tags has no row left to update
        UPDATE tag_counts AS c SET n = c.n - d.n
          FROM (SELECT image_id, count(*) AS n FROM old_rows GROUP BY image_id) AS d
         WHERE c.image_id = d.image_id;
    ELSE  -- a tag moved to another image (per row, rare)
        UPDATE tag_counts SET n = n - 1 WHERE image_id = OLD.image_id;
        INSERT INTO tag_counts AS c (image_id, n) VALUES (NEW.image_id, 1)
        ON CONFLICT ON CONSTRAINT tag_counts_pkey DO UPDATE SET n = c.n + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER tags_counted_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_counted();
CREATE OR REPLACE TRIGGER tags_counted_delete AFTER DELETE ON tags
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_counted();
CREATE OR REPLACE TRIGGER tags_counted_move AFTER UPDATE OF image_id ON tags
    FOR EACH ROW WHEN (OLD.image_id IS DISTINCT FROM NEW.image_id)
    EXECUTE FUNCTION tags_counted();

-- Add `plus` and take `minus` entries from the counts, netted first, cells locked in key
-- order (two writers of overlapping cells cannot deadlock).
CREATE OR REPLACE FUNCTION list_counts_add(plus list_entries[], minus list_entries[]) RETURNS void
LANGUAGE sql SET jit = off AS $$
    INSERT INTO list_counts AS c (scope, category_id, registry_id, bucket, jumpstart, is_private, n)
    SELECT e.scope, e.category_id, r.registry_id, b.bucket, e.jumpstart, e.is_private, sum(e.d)
      FROM (SELECT p.scope, p.category_id, p.bucket AS name_bucket, p.registry_id, p.jumpstart,
                   p.is_private, 1 AS d FROM unnest(plus) AS p
            UNION ALL
            SELECT m.scope, m.category_id, m.bucket, m.registry_id, m.jumpstart, m.is_private, -1
              FROM unnest(minus) AS m) AS e
     CROSS JOIN LATERAL (VALUES (0::bigint), (e.registry_id)) AS r (registry_id)
     CROSS JOIN LATERAL (VALUES (0), (e.name_bucket)) AS b (bucket)
     GROUP BY 1, 2, 3, 4, 5, 6
    HAVING sum(e.d) <> 0
     ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT ON CONSTRAINT list_counts_pkey DO UPDATE SET n = c.n + EXCLUDED.n;
$$;

CREATE OR REPLACE FUNCTION list_entries_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM list_counts_add(ARRAY(SELECT n::list_entries FROM new_rows AS n), '{}');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM list_counts_add('{}', ARRAY(SELECT o::list_entries FROM old_rows AS o));
    ELSE
        PERFORM list_counts_add(ARRAY(SELECT n::list_entries FROM new_rows AS n), ARRAY(SELECT o::list_entries FROM old_rows AS o));
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER list_entries_counted_insert AFTER INSERT ON list_entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_entries_counted();
CREATE OR REPLACE TRIGGER list_entries_counted_update AFTER UPDATE ON list_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_entries_counted();
CREATE OR REPLACE TRIGGER list_entries_counted_delete AFTER DELETE ON list_entries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_entries_counted();

-- Recompute the entries of every image called one of `names` from the current rows and
-- write only the difference. The entries of one name depend on each other (an own image
-- hides the catalog image of its name), so a name is the unit of refresh.
-- Locks: the bucket boundaries shared (list_buckets_split takes them exclusively), then one
-- of 256 stripes per name in order, so concurrent writers of one name take turns and each
-- reads what the previous one committed (writers run at READ COMMITTED).
CREATE OR REPLACE FUNCTION list_entries_refresh(names text[]) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    IF cardinality(names) IS DISTINCT FROM 0 AND names IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(7305014, 0);
        PERFORM pg_advisory_xact_lock(7305014, s)
           FROM (SELECT DISTINCT 1 + (hashtext(n) & 255) AS s FROM unnest(names) AS n ORDER BY 1) AS x;
        -- Entries that no longer hold: the owner changed, an owner of the name went away, a
        -- category was removed. Index probes only, whatever the planner thinks of the sizes.
        DELETE FROM list_entries AS e
         USING images AS i, (SELECT DISTINCT unnest(names) AS name) AS n
         WHERE n.name = i.name AND e.image_id = i.id
           AND NOT ((e.scope = coalesce(i.owner_id, 0)
                     OR (i.owner_id IS NULL AND e.scope < 0
                         AND EXISTS (SELECT 1 FROM images AS o WHERE o.owner_id = -e.scope AND o.name = i.name)))
                    AND (e.category_id = 0
                         OR EXISTS (SELECT 1 FROM image_categories AS ic
                                     WHERE ic.image_id = e.image_id AND ic.category_id = e.category_id)));
        INSERT INTO list_entries AS e (image_id, scope, category_id, name, registry_id, jumpstart,
                                       is_private, bucket)
        SELECT i.id, sc.scope, k.category_id, i.name, i.registry_id, i.jumpstart, i.is_private_image, bk.id
          FROM (SELECT DISTINCT unnest(names) AS name) AS n
          JOIN images AS i ON i.name = n.name
         CROSS JOIN LATERAL (SELECT b.id FROM list_buckets AS b WHERE b.lower <= i.name COLLATE "C"
                              ORDER BY b.lower DESC LIMIT 1) AS bk
         CROSS JOIN LATERAL (SELECT coalesce(i.owner_id, 0) AS scope
                             UNION ALL
                             SELECT -o.owner_id FROM images AS o
                              WHERE i.owner_id IS NULL AND o.name COLLATE "C" = i.name COLLATE "C"
                                AND o.owner_id IS NOT NULL) AS sc
         CROSS JOIN LATERAL (SELECT 0::bigint AS category_id
                             UNION ALL
                             SELECT ic.category_id FROM image_categories AS ic WHERE ic.image_id = i.id) AS k
        ON CONFLICT ON CONSTRAINT list_entries_pkey DO UPDATE
           SET name = EXCLUDED.name, registry_id = EXCLUDED.registry_id, jumpstart = EXCLUDED.jumpstart,
               is_private = EXCLUDED.is_private, bucket = EXCLUDED.bucket
         WHERE (e.name, e.registry_id, e.jumpstart, e.is_private, e.bucket)
               IS DISTINCT FROM
               (EXCLUDED.name, EXCLUDED.registry_id, EXCLUDED.jumpstart, EXCLUDED.is_private, EXCLUDED.bucket);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION images_list_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM list_entries_refresh(ARRAY(SELECT DISTINCT name FROM new_rows));
    ELSIF TG_OP = 'DELETE' THEN
        -- a deleted image's own entries go with it (ON DELETE CASCADE); this un-hides the
        -- catalog image of a deleted own image's name
        PERFORM list_entries_refresh(ARRAY(SELECT DISTINCT name FROM old_rows));
    ELSE
        PERFORM list_entries_refresh(ARRAY[OLD.name, NEW.name]);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER images_list_insert AFTER INSERT ON images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_list_refresh();
CREATE OR REPLACE TRIGGER images_list_delete AFTER DELETE ON images
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_list_refresh();
-- Per row, and only when a listed column changes: schedule and state writes (most of them)
-- never call the function.
CREATE OR REPLACE TRIGGER images_list_update AFTER UPDATE ON images
    FOR EACH ROW
    WHEN ((OLD.name, OLD.owner_id, OLD.registry_id, OLD.jumpstart, OLD.is_private_image)
          IS DISTINCT FROM (NEW.name, NEW.owner_id, NEW.registry_id, NEW.jumpstart, NEW.is_private_image))
    EXECUTE FUNCTION images_list_refresh();

CREATE OR REPLACE FUNCTION image_categories_list_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- rows of an image deleted in the same statement join nothing: its entries went with it
    IF TG_OP = 'INSERT' THEN
        PERFORM list_entries_refresh(ARRAY(SELECT DISTINCT i.name FROM new_rows AS x JOIN images AS i ON i.id = x.image_id));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM list_entries_refresh(ARRAY(SELECT DISTINCT i.name FROM old_rows AS x JOIN images AS i ON i.id = x.image_id));
    ELSE
        PERFORM list_entries_refresh(ARRAY(
            SELECT DISTINCT i.name FROM (SELECT image_id FROM old_rows UNION SELECT image_id FROM new_rows) AS x
              JOIN images AS i ON i.id = x.image_id));
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER image_categories_list_insert AFTER INSERT ON image_categories
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION image_categories_list_refresh();
CREATE OR REPLACE TRIGGER image_categories_list_update AFTER UPDATE ON image_categories
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION image_categories_list_refresh();
CREATE OR REPLACE TRIGGER image_categories_list_delete AFTER DELETE ON image_categories
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION image_categories_list_refresh();

-- Split every bucket holding more than 2 x `target` images into buckets of about `target`
-- names and move their entries; returns how many buckets it added. Takes the boundaries
-- exclusively, so it waits for writers in flight (callers set a lock_timeout and retry later).
CREATE OR REPLACE FUNCTION list_buckets_split(target integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    big record;
    added integer := 0;
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(7305014, 0);
    FOR big IN
        SELECT b.lower, (SELECT min(u.lower) FROM list_buckets AS u WHERE u.lower > b.lower) AS upper
          FROM list_buckets AS b
          JOIN (SELECT bucket, sum(c.n) AS n FROM list_counts AS c
                 WHERE c.scope >= 0 AND c.category_id = 0 AND c.bucket > 0 AND c.registry_id = 0
                 GROUP BY bucket) AS s ON s.bucket = b.id
         WHERE s.n > 2 * target
    LOOP
        INSERT INTO list_buckets (lower)
        SELECT x.name FROM (
            SELECT d.name, row_number() OVER (ORDER BY d.name) AS rn
              FROM (SELECT DISTINCT i.name COLLATE "C" AS name FROM images AS i
                     WHERE i.name COLLATE "C" >= big.lower
                       AND (big.upper IS NULL OR i.name COLLATE "C" < big.upper)) AS d) AS x
         WHERE (x.rn - 1) % target = 0 AND x.rn > 1
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        added := added + n;
        PERFORM list_entries_refresh(ARRAY(
            SELECT DISTINCT i.name FROM images AS i
             WHERE i.name COLLATE "C" >= big.lower AND (big.upper IS NULL OR i.name COLLATE "C" < big.upper)));
    END LOOP;
    RETURN added;
END;
$$;

-- A database upgraded from before these tables (migrations/0004_list_counts.sql creates them
-- empty): buckets of about 1,000 names, then every image's entries through the one function
-- that writes them, so the backfill cannot disagree with the triggers; then the tag counts.
-- A no-op afterwards: every image has at least one entry, every tag a count.
INSERT INTO list_buckets (lower)
SELECT x.name FROM (
    SELECT d.name, row_number() OVER (ORDER BY d.name) AS rn
      FROM (SELECT DISTINCT name COLLATE "C" AS name FROM images) AS d) AS x
 WHERE (x.rn - 1) % 1000 = 0 AND x.rn > 1
   AND NOT EXISTS (SELECT 1 FROM list_entries) AND EXISTS (SELECT 1 FROM images)
ON CONFLICT DO NOTHING;
SELECT list_entries_refresh(ARRAY(SELECT DISTINCT name FROM images))
 WHERE NOT EXISTS (SELECT 1 FROM list_entries) AND EXISTS (SELECT 1 FROM images);
INSERT INTO tag_counts (image_id, n)
SELECT image_id, count(*) FROM tags GROUP BY image_id
HAVING NOT EXISTS (SELECT 1 FROM tag_counts)
ON CONFLICT DO NOTHING;
-- ============================================================================================
-- End of the lists section.
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

-- ============================================================================================
-- Tag history and outgoing notifications (SPEC §7). Written only by the triggers below, in
-- the transaction that changes a tag or an image, whichever path changed it; read by
-- api/history.py and api/subscriptions.py, fanned out by worker/fanout.py, delivered by
-- worker/deliverer.py, pruned by worker/notify_retention.py. A writer says how it saw a change with
-- `SET LOCAL registry_sync.observed_via = 'webhook' | 'poll'` (worker/history.py); a path
-- that says nothing is recorded as 'unknown'.
-- ==============================================================================-- ============================================================================================

-- ============================================================================================
-- A tag glob (`*` any run, `?` one character) as a LIKE pattern (tag names may contain `_`).
CREATE OR REPLACE FUNCTION glob_like(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(replace(replace(replace(replace(pattern, '\', '\\'), '_', '\_'), '%', '\%'), '*', '%'), '?', '_')
$$;

-- Every digest a tag pointed at, with the interval it held: `valid_until` NULL while it still
-- does. `seq` counts a tag's entries (1, 2, …): retention keeps the last TAG_HISTORY_KEEP.
CREATE TABLE IF NOT EXISTS tag_history (
    id            bigserial   PRIMARY KEY,
    image_id      bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag           text        NOT NULL,
    digest        text        NOT NULL,
    observed_via  text        NOT NULL,
    valid_from    timestamptz NOT NULL,
    valid_until   timestamptz,
    seq           bigint      NOT NULL,
    -- this digest replaced another of a tag its image expects never to move (immutable_tags)
    unexpected    boolean     NOT NULL DEFAULT false,
    CONSTRAINT tag_history_observed_via_check CHECK (observed_via IN ('webhook', 'poll', 'unknown'))
);
CREATE INDEX IF NOT EXISTS tag_history_tag_idx ON tag_history (image_id, tag, seq DESC);
CREATE UNIQUE INDEX IF NOT EXISTS tag_history_open_idx ON tag_history (image_id, tag) WHERE valid_until IS NULL;
CREATE INDEX IF NOT EXISTS tag_history_seq_idx ON tag_history (seq);
CREATE INDEX IF NOT EXISTS tag_history_until_idx ON tag_history (valid_until) WHERE valid_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS tag_history_unexpected_idx ON tag_history (image_id, id) WHERE unexpected;

-- Who wants to hear of changes: an account's endpoint. Without `image`, the account's own
-- images; with it, the image of that name as the account sees it (its own, else the
-- catalog's). The secret signs deliveries (sealed with SECRET_KEY, core/crypto.py); after a
-- rotation the previous one signs too for NOTIFY_ROTATION_GRACE_SECONDS.
CREATE TABLE IF NOT EXISTS subscriptions (
    id               bigserial   PRIMARY KEY,
    account_id       bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url              text        NOT NULL,
    events           text[]      NOT NULL,
    image            text,
    tag_pattern      text,
    secret           bytea       NOT NULL,
    previous_secret  bytea,
    rotated_at       timestamptz,
    disabled_at      timestamptz,
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- delivery (worker/deliverer.py): when the first pending delivery is due (NULL: none is
    -- pending), how many deliveries the fan-out ever added (a deliverer that found none
    -- pending tells by it whether new ones came meanwhile), and the deliverer's lease
    next_attempt_at  timestamptz,
    enqueued         bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_until      timestamptz,
    CONSTRAINT subscriptions_events_check CHECK (
        cardinality(events) > 0
        AND events <@ ARRAY['tag.pushed', 'tag.moved', 'tag.deleted', 'image.state', 'sync.failing']::text[])
);
CREATE INDEX IF NOT EXISTS subscriptions_account_idx ON subscriptions (account_id, id);
CREATE INDEX IF NOT EXISTS subscriptions_image_idx ON subscriptions (image) WHERE image IS NOT NULL;
CREATE INDEX IF NOT EXISTS subscriptions_due_idx ON subscriptions (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL AND disabled_at IS NULL;

-- The transactional outbox: one row per change, written by the triggers below in the
-- change's transaction (only while any subscription is enabled); `data` is the body's `data`.
CREATE TABLE IF NOT EXISTS notification_events (
    id           bigserial   PRIMARY KEY,
    image_id     bigint      NOT NULL,  -- no foreign key: an image deleted later takes its events' audience with it
    type         text        NOT NULL,
    tag          text,
    data         jsonb       NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    fanned_out   boolean     NOT NULL DEFAULT false,
    CONSTRAINT notification_events_type_check
        CHECK (type IN ('tag.pushed', 'tag.moved', 'tag.deleted', 'image.state', 'sync.failing'))
);
CREATE INDEX IF NOT EXISTS notification_events_pending_idx ON notification_events (id) WHERE NOT fanned_out;
CREATE INDEX IF NOT EXISTS notification_events_occurred_idx ON notification_events (occurred_at);

-- One event for one subscription: `msg_id` is its `webhook-id` on every attempt (a
-- redelivery is a new row with the same msg_id). A subscription's deliveries go out in id order.
CREATE TABLE IF NOT EXISTS notification_deliveries (
    id               bigserial   PRIMARY KEY,
    subscription_id  bigint      NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_id         bigint      NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE,
    msg_id           text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    note             text,
    CONSTRAINT notification_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed', 'dropped'))
);
CREATE INDEX IF NOT EXISTS notification_deliveries_pending_idx ON notification_deliveries (subscription_id, id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS notification_deliveries_subscription_idx
    ON notification_deliveries (subscription_id, id DESC);
CREATE INDEX IF NOT EXISTS notification_deliveries_event_idx ON notification_deliveries (event_id);
CREATE INDEX IF NOT EXISTS notification_deliveries_finished_idx ON notification_deliveries (finished_at)
    WHERE status <> 'pending';

-- Each attempt of a delivery: HTTP status (NULL: no answer), time taken, the answer's start.
CREATE TABLE IF NOT EXISTS notification_attempts (
    id            bigserial   PRIMARY KEY,
    delivery_id   bigint      NOT NULL REFERENCES notification_deliveries (id) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    status_code   integer,
    duration_ms   double precision NOT NULL,
    response      text        NOT NULL DEFAULT '',
    error         text
);
CREATE INDEX IF NOT EXISTS notification_attempts_delivery_idx ON notification_attempts (delivery_id, id);

-- The tag changes of one statement: ($1..$4)[i] is one tag whose digest went from olds[i] to
-- news[i] (NULL: it had none / it is gone). Closes the open history entry, opens the new one
-- and writes one outbox row per change. An image deleted with its tags records nothing.
CREATE OR REPLACE FUNCTION record_tag_changes(ids bigint[], names text[], olds text[], news text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    via text := coalesce(nullif(current_setting('registry_sync.observed_via', true), ''), 'unknown');
    at timestamptz := clock_timestamp();
    notify boolean := EXISTS (SELECT 1 FROM subscriptions WHERE disabled_at IS NULL);
BEGIN
    -- first, in a statement of its own: the open entry is unique per tag
    UPDATE tag_history AS h SET valid_until = at
      FROM unnest(ids, names) AS u (image_id, tag)
     WHERE h.image_id = u.image_id AND h.tag = u.tag AND h.valid_until IS NULL;
    WITH c AS (
        SELECT u.image_id, u.tag, u.old_digest, u.new_digest, i.name AS image_name,
               (u.old_digest IS NOT NULL AND u.new_digest IS NOT NULL AND cardinality(i.immutable_tags) > 0
                AND EXISTS (SELECT 1 FROM unnest(i.immutable_tags) AS p WHERE u.tag LIKE glob_like(p))) AS unexpected
          FROM unnest(ids, names, olds, news) AS u (image_id, tag, old_digest, new_digest)
          JOIN images AS i ON i.id = u.image_id
    ), opened AS (
        INSERT INTO tag_history (image_id, tag, digest, observed_via, valid_from, seq, unexpected)
        SELECT c.image_id, c.tag, c.new_digest, via, at,
               coalesce((SELECT h.seq FROM tag_history AS h WHERE h.image_id = c.image_id AND h.tag = c.tag
                          ORDER BY h.seq DESC LIMIT 1), 0) + 1,
               c.unexpected
          FROM c WHERE c.new_digest IS NOT NULL
    )
    INSERT INTO notification_events (image_id, type, tag, data, occurred_at)
    SELECT c.image_id,
           CASE WHEN c.old_digest IS NULL THEN 'tag.pushed' WHEN c.new_digest IS NULL THEN 'tag.deleted'
                ELSE 'tag.moved' END,
           c.tag,
           jsonb_strip_nulls(jsonb_build_object(
               'image', c.image_name, 'tag', c.tag,
               'resource_uri', '/api/v1/image/' || c.image_name || '/tag/' || c.tag || '/',
               'digest', coalesce(c.new_digest, c.old_digest),
               'previous_digest', CASE WHEN c.new_digest IS NOT NULL THEN c.old_digest END,
               'observed_via', via))
           || CASE WHEN c.old_digest IS NOT NULL AND c.new_digest IS NOT NULL
                   THEN jsonb_build_object('expected_immutable', c.unexpected) ELSE '{}' END,
           at
      FROM c WHERE notify
     ORDER BY c.image_id, c.tag;
    IF notify AND cardinality(ids) > 0 THEN
        PERFORM pg_notify('registry_sync_outbox', '');
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION tags_record_history() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    names text[];
    olds text[];
    news text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.image_id), array_agg(n.name), array_agg(NULL::text), array_agg(n.manifest_digest)
          INTO ids, names, olds, news
          FROM new_rows AS n WHERE n.manifest_digest IS NOT NULL;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(n.image_id), array_agg(n.name), array_agg(o.manifest_digest), array_agg(n.manifest_digest)
          INTO ids, names, olds, news
          FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
         WHERE n.manifest_digest IS DISTINCT FROM o.manifest_digest;
    ELSE
        SELECT array_agg(o.image_id), array_agg(o.name), array_agg(o.manifest_digest), array_agg(NULL::text)
          INTO ids, names, olds, news
          FROM old_rows AS o WHERE o.manifest_digest IS NOT NULL;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM record_tag_changes(ids, names, olds, news);
    END IF;
    RETURN NULL;
END;
$$;

-- Statement-level, like every trigger on `tags`: a sync that writes fifty tags records them
-- in one call. Triggers of one event fire in name order: `tags_add_*` before `tags_after_*`,
-- so a tag's event is in the outbox before the image.state event it causes.
CREATE OR REPLACE TRIGGER tags_add_history_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_record_history();
CREATE OR REPLACE TRIGGER tags_add_history_update AFTER UPDATE ON tags
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_record_history();
CREATE OR REPLACE TRIGGER tags_add_history_delete AFTER DELETE ON tags
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tags_record_history();

-- image.state (the aggregate moved) and sync.failing (the first failure after a success or
-- since the image was added: once, not per retry). Per row with a WHEN, so the many updates
-- of leases and schedules never call the function.
CREATE OR REPLACE FUNCTION images_record_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM subscriptions WHERE disabled_at IS NULL) THEN
        RETURN NULL;
    END IF;
    IF TG_ARGV[0] = 'state' THEN
        INSERT INTO notification_events (image_id, type, data)
        VALUES (NEW.id, 'image.state', jsonb_build_object(
            'image', NEW.name, 'resource_uri', '/api/v1/image/' || NEW.name || '/',
            'previous_state', OLD.state, 'state', NEW.state));
    ELSE
        INSERT INTO notification_events (image_id, type, data)
        VALUES (NEW.id, 'sync.failing', jsonb_build_object(
            'image', NEW.name, 'resource_uri', '/api/v1/image/' || NEW.name || '/',
            'error', NEW.sync_error, 'failing_since', NEW.sync_error_at));
    END IF;
    PERFORM pg_notify('registry_sync_outbox', '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER images_state_event AFTER UPDATE OF state ON images
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION images_record_events('state');
CREATE OR REPLACE TRIGGER images_failing_event AFTER UPDATE OF sync_failures ON images
    FOR EACH ROW WHEN (OLD.sync_failures = 0 AND NEW.sync_failures > 0)
    EXECUTE FUNCTION images_record_events('failing');
-- ============================================================================================
-- End of the notifications section.
-- ============================================================================================

-- ============================================================================================
-- Build states (worker/builds.py, the one writer of build states; worker/quay_builds.py polls
-- Quay's build API). `builds.first_seen_at` orders the builds of a repository for the SPEC §2
-- rule "a newer build wins": both the webhook path and the poller write it, so a build that
-- Quay's webhooks and its API both name (one id) has one place in the order.
-- images.build_token and the backfill of `builds` come with migrations/0011_builds.sql.
-- ============================================================================================
-- Each sender has its own order: `account_id` is the account whose receiver reported the
-- build (NULL: the registry's own word, an operator receiver or its build API). A sender's
-- builds are ordered by its own sightings and the registry's, never another account's: an
-- account that reports a build id first (a CI's predictable build numbers) cannot move the
-- builds of another.
CREATE TABLE IF NOT EXISTS builds (
    id             bigserial   PRIMARY KEY,
    host           text        NOT NULL,  -- registry host as in registries.host
    repository     text        NOT NULL,  -- as in images.repository
    build_id       text        NOT NULL,  -- the sender's build id (Quay: the build's uuid)
    account_id     bigint      REFERENCES accounts (id) ON DELETE CASCADE,
    first_seen_at  timestamptz NOT NULL,  -- when the database first saw the id (its clock)
    ended_at       timestamptz,           -- the time of its first terminal event (Quay's API has no end
                                          -- time: when the database first saw a terminal phase)
    CONSTRAINT builds_key UNIQUE NULLS NOT DISTINCT (host, repository, build_id, account_id)
);
-- retention (worker/retention.py)
CREATE INDEX IF NOT EXISTS builds_first_seen_idx ON builds (first_seen_at);

-- Per image on a build-API host: the last read of its builds, and the poll while one runs.
-- A lease like the sync's (`claim:`/`run:` tokens) keeps two workers from reading at once.
CREATE TABLE IF NOT EXISTS build_polls (
    image_id     bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    due_at       timestamptz,           -- a build is running: read again then; NULL: only with syncs
    lease_owner  text,
    lease_until  timestamptz,
    read_at      timestamptz,           -- the last read the build API answered
    error        text,                  -- why the last read failed (a 401: no or a wrong build_token)
    error_at     timestamptz,
    recent       jsonb       NOT NULL DEFAULT '[]',  -- what the last read saw, for …/sync/
    CONSTRAINT build_polls_pkey PRIMARY KEY (image_id)
);
CREATE INDEX IF NOT EXISTS build_polls_due_idx ON build_polls (due_at) WHERE due_at IS NOT NULL;
-- ============================================================================================
-- End of the builds section.
-- ============================================================================================

-- ============================================================================================
-- The dashboard (dashboard/listing.py, dashboard/fleet.py). Indexes of existing tables come
-- with migrations/0014_dashboard.sql.
-- ============================================================================================
-- The images page by state and newest build first, and by state and name: one ordered range
-- per (owner, state), an account's own images (owner A) and the catalog's (owner 0 stands for
-- NULL: an equality, so that the range is read in index order); a page merges at most 8 of
-- them. Never-built images sort last (-infinity).
CREATE INDEX IF NOT EXISTS images_owner_state_built_idx
    ON images ((COALESCE(owner_id, 0)), state, (COALESCE(last_build_date, '-infinity'::timestamptz)) DESC, id DESC);
CREATE INDEX IF NOT EXISTS images_owner_state_name_idx
    ON images ((COALESCE(owner_id, 0)), state, name COLLATE "C");
-- The fleet page: the images whose last sync failed, newest failure first; the leases held.
CREATE INDEX IF NOT EXISTS images_failing_idx ON images (sync_error_at DESC) WHERE sync_error IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_leased_idx ON images (lease_owner) WHERE lease_owner IS NOT NULL;
-- ============================================================================================
-- End of the dashboard section.
-- ============================================================================================
