-- registry-sync: the whole current schema.
-- Idempotent: applying it to a database that already has it changes nothing and loses
-- nothing (every statement is IF NOT EXISTS / CREATE OR REPLACE). `registry-sync migrate`
-- runs it under an advisory lock so two deploys cannot apply it at once.

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
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
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
    fetched_at     timestamptz NOT NULL DEFAULT now()
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
    CONSTRAINT tags_image_name_key UNIQUE (image_id, name),
    CONSTRAINT tags_state_check CHECK (state IN ('Empty', 'Success', 'Building', 'Failed'))
);
CREATE INDEX IF NOT EXISTS tags_config_idx ON tags (config_digest);

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
LANGUAGE sql AS $$
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
