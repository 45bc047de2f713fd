"""A repository that does not exist (yet): registered before its first push, or misnamed.

The registry answers 404 NAME_UNKNOWN (RepositoryNotFoundError). Someone setting things up
registers first and pushes after, so such a failure is retried like a transient one (the
backoff from SYNC_BACKOFF_BASE_SECONDS, doubling) until the repository has been missing for
REPOSITORY_MISSING_GRACE_SECONDS (`images.missing_since`, kept by worker/store.py); only then
is it waited on like a permanent error (SYNC_BACKOFF_MAX_SECONDS). A push notification or a
re-sync request syncs at once either way.

A 404 is also what a registry answers to credentials that cannot see the repository: the
image loses its proof of access all the same (worker/sync.py), whatever the backoff.

The sentence recorded at `…/sync/` comes from the error's type, never from the registry's
body, and says when the next try is.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

from core.settings import Settings
from worker.registry.errors import RepositoryNotFoundError

ADVICE = "repository not found: push it, or check the name"


def missing_for(started_at: datetime, missing_since: datetime | None) -> float:
    """Seconds the repository has been missing when this sync began (0 for the first 404)."""
    return 0.0 if missing_since is None else max(0.0, (started_at - missing_since).total_seconds())


def is_permanent(settings: Settings, started_at: datetime, missing_since: datetime | None) -> bool:
    """Missing for longer than REPOSITORY_MISSING_GRACE_SECONDS: no longer worth a quick retry."""
    return missing_for(started_at, missing_since) >= settings.repository_missing_grace_seconds


def message(exc: RepositoryNotFoundError, settings: Settings, retry_in: float, *, permanent: bool,
            now: datetime | None = None) -> str:
    """The error recorded for the image; it starts with the error's type name, which the webhook
    inbox reads (worker/inbox.py: an unproven image waiting for its repository)."""
    when = (now or datetime.now(UTC)) + timedelta(seconds=retry_in)
    stamp = email.utils.format_datetime(when.astimezone(UTC), usegmt=True)
    nxt = f"next try in {duration(retry_in)} ({stamp})"
    if permanent:
        nxt = f"Missing for over {duration(settings.repository_missing_grace_seconds)}: {nxt}"
    else:
        nxt = "N" + nxt[1:]
    return f"{type(exc).__name__}: {ADVICE}. {nxt}; a push notification or a re-sync request syncs at once. [{exc}]"


def duration(seconds: float) -> str:
    """`9 s`, `12 min`, `2 h`: for people."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
