"""What one account may make the service do on its behalf (SPEC §4 Fair sharing).

Every request that queues priority work for an account passes through
`admit_account_action(app, account, action)`, the one place that counts it:

- `REGISTRATION`: `POST /api/v1/image/` (a first sync at the highest priority);
- `RESYNC`: a re-sync request (`POST …/tag/<tag>/build/`, a PATCH that changes credentials
  or the tag policy, `POST …/sync/`);
- `HUB_LOOKUP`: a GET of a Docker Hub name the catalog does not have yet (a priority
  look-up on the hub, api/hub_lookup.py).

Each is counted per account in fixed windows of ACCOUNT_LIMIT_WINDOW_SECONDS, in Redis, so
every web process sees the same count (api/throttle.py WindowCounter; while Redis does not
answer, each process counts alone). Past its limit (ACCOUNT_REGISTRATION_LIMIT,
ACCOUNT_RESYNC_LIMIT, ACCOUNT_HUB_LOOKUP_LIMIT; 0: none) the request is refused before it
does anything: 429, `Retry-After` (the seconds left of the window) and a JSON sentence.

Within the limit the count still matters: it picks the lane of the priority queue the work
goes to (core/queue.py lane_for): an account's first requests of a window go first, a burst
of many goes behind every other account's first ones.
"""

from __future__ import annotations

import math

from aiohttp import web

from api.errors import ThrottledError
from api.keys import SETTINGS
from api.throttle import ACCOUNT_COUNTS
from core.accounts import Account
from core.queue import lane_for

REGISTRATION, RESYNC, HUB_LOOKUP = "registration", "resync", "hub_lookup"

# action -> (setting holding its limit, what the refusal calls it)
_ACTIONS = {
    REGISTRATION: ("account_registration_limit", "image registrations"),
    RESYNC: ("account_resync_limit", "re-sync requests"),
    HUB_LOOKUP: ("account_hub_lookup_limit", "look-ups of new Docker Hub images"),
}


async def admit_account_action(app: web.Application, account: Account, action: str) -> int:
    """Count one `action` (REGISTRATION, RESYNC or HUB_LOOKUP) of `account`. Raises
    ThrottledError (429 with Retry-After) when the account is over that action's limit for
    the current window. Returns the message priority (lane) for the task the action queues:
    pass it to api/publish.py."""
    setting, what = _ACTIONS[action]
    settings = app[SETTINGS]
    limit: int = getattr(settings, setting)
    [(count, left)] = await app[ACCOUNT_COUNTS].incr([f"{action}:{account.id}"])
    if limit and count > limit:
        window = settings.account_limit_window_seconds
        wait = max(1, math.ceil(left))
        raise ThrottledError(
            f"too many {what} from this account: at most {limit} per {window:g} s; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return lane_for(count)
