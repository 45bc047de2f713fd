-- Since when the image's repository has been answering "not found" (NULL: it was found, or
-- never asked). A repository missing for less than REPOSITORY_MISSING_GRACE_SECONDS is
-- retried like a transient failure: registered before its first push (worker/sync.py).
ALTER TABLE images ADD COLUMN IF NOT EXISTS missing_since timestamptz;
