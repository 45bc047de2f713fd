"""`registry-sync rotate-secret`: re-seal every stored credential with SECRET_KEY.

Run it after setting SECRET_KEY to the new key and SECRET_KEY_OLD to the old one(s), with the
new settings already rolled out (web and worker then open both). Afterwards no credential
needs SECRET_KEY_OLD, and the old keys can be dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from core.crypto import CredentialBox

BATCH_SQL = """
SELECT id, name, credentials FROM images
 WHERE credentials IS NOT NULL AND id > $1
 ORDER BY id
 LIMIT $2
"""
# Compare-and-swap: a credential changed by a PATCH meanwhile is already sealed with the new
# key (the API seals with SECRET_KEY) and must not be overwritten with the old value.
RESEAL_SQL = "UPDATE images SET credentials = $2 WHERE id = $1 AND credentials = $3"


@dataclass
class RotationResult:
    checked: int = 0
    resealed: int = 0
    current: int = 0  # already sealed with SECRET_KEY (a second run finds only these)
    unreadable: list[str] = field(default_factory=list)  # image names no key opens


async def rotate_credentials(
    conn: asyncpg.Connection,
    box: CredentialBox,
    *,
    batch_size: int = 500,
    progress: Callable[[RotationResult], None] | None = None,
) -> RotationResult:
    """Re-seal, batch by batch (one short transaction each), every credential not sealed with
    SECRET_KEY yet. Idempotent; safe while the service runs. Credentials that no key opens are
    left as they are and listed in the result."""
    result = RotationResult()
    last_id = 0
    while True:
        rows = await conn.fetch(BATCH_SQL, last_id, batch_size)
        if not rows:
            return result
        async with conn.transaction():
            for row in rows:
                result.checked += 1
                token = bytes(row["credentials"])
                if box.is_current(token):
                    result.current += 1
                    continue
                try:
                    new = box.reseal(token)
                except ValueError:
                    result.unreadable.append(row["name"])
                    continue
                status = await conn.execute(RESEAL_SQL, row["id"], new, token)
                result.resealed += status.endswith(" 1")
                result.current += status.endswith(" 0")  # changed meanwhile: sealed anew
        last_id = rows[-1]["id"]
        if progress:
            progress(result)


SUBSCRIPTIONS_SQL = """
SELECT id, secret, previous_secret FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2
"""
RESEAL_SUBSCRIPTION_SQL = """
UPDATE subscriptions SET secret = $2, previous_secret = $3
 WHERE id = $1 AND secret = $4 AND previous_secret IS NOT DISTINCT FROM $5
"""


async def rotate_subscription_secrets(
    conn: asyncpg.Connection, box: CredentialBox, *, batch_size: int = 500,
) -> RotationResult:
    """Re-seal the signing secrets of notification subscriptions (and a rotated one still
    honoured) like rotate_credentials; `unreadable` lists subscription ids."""
    result = RotationResult()
    last_id = 0
    while rows := await conn.fetch(SUBSCRIPTIONS_SQL, last_id, batch_size):
        async with conn.transaction():
            for row in rows:
                result.checked += 1
                tokens = [bytes(t) if t is not None else None for t in (row["secret"], row["previous_secret"])]
                if all(t is None or box.is_current(t) for t in tokens):
                    result.current += 1
                    continue
                try:
                    new = [box.reseal(t) if t is not None and not box.is_current(t) else t for t in tokens]
                except ValueError:
                    result.unreadable.append(str(row["id"]))
                    continue
                status = await conn.execute(RESEAL_SUBSCRIPTION_SQL, row["id"], *new, *tokens)
                result.resealed += status.endswith(" 1")
                result.current += status.endswith(" 0")
        last_id = rows[-1]["id"]
    return result
