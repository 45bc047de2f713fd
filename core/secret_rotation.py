"""`registry-sync rotate-secret`: re-seal every stored credential (registry credentials,
account receivers' secrets) with SECRET_KEY.

Run it after setting SECRET_KEY to the new key and SECRET_KEY_OLD to the old one(s), with the
new settings already rolled out (web and worker then open both). Afterwards no credential
needs SECRET_KEY_OLD, and the old keys can be dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from core.crypto import CredentialBox

# Each batch query (id > $1, $2 rows) yields `id`, `label` (what to name when no key opens it)
# and `token`. Each re-seal is a compare-and-swap ($1 id, $2 new, $3 old): a secret changed
# meanwhile (a PATCH of credentials, a rotation of an account's receivers) is already sealed
# with the new key (the API seals with SECRET_KEY) and must not be overwritten with the old value.
CREDENTIALS_BATCH_SQL = """
SELECT id, name AS label, credentials AS token FROM images
 WHERE credentials IS NOT NULL AND id > $1
 ORDER BY id
 LIMIT $2
"""
CREDENTIALS_RESEAL_SQL = "UPDATE images SET credentials = $2 WHERE id = $1 AND credentials = $3"
RECEIVERS_BATCH_SQL = """
SELECT r.id, 'the ' || r.sender || ' receiver of account ' || a.username AS label, r.secret AS token
  FROM receivers AS r JOIN accounts AS a ON a.id = r.account_id
 WHERE r.id > $1
 ORDER BY r.id
 LIMIT $2
"""
RECEIVERS_RESEAL_SQL = "UPDATE receivers SET secret = $2 WHERE id = $1 AND secret = $3"
SEALED = ((CREDENTIALS_BATCH_SQL, CREDENTIALS_RESEAL_SQL), (RECEIVERS_BATCH_SQL, RECEIVERS_RESEAL_SQL))


@dataclass
class RotationResult:
    checked: int = 0
    resealed: int = 0
    current: int = 0  # already sealed with SECRET_KEY (a second run finds only these)
    unreadable: list[str] = field(default_factory=list)  # image names (and receivers) no key opens


async def rotate_credentials(
    conn: asyncpg.Connection,
    box: CredentialBox,
    *,
    batch_size: int = 500,
    progress: Callable[[RotationResult], None] | None = None,
) -> RotationResult:
    """Re-seal, batch by batch (one short transaction each), every registry credential and
    every account receiver's secret not sealed with SECRET_KEY yet. Idempotent; safe while
    the service runs. Secrets that no key opens are left as they are and listed in the result."""
    result = RotationResult()
    for batch_sql, reseal_sql in SEALED:
        await _rotate(conn, box, batch_sql, reseal_sql, result, batch_size, progress)
    return result


async def _rotate(conn: asyncpg.Connection, box: CredentialBox, batch_sql: str, reseal_sql: str,
                  result: RotationResult, batch_size: int,
                  progress: Callable[[RotationResult], None] | None) -> None:
    last_id = 0
    while True:
        rows = await conn.fetch(batch_sql, last_id, batch_size)
        if not rows:
            return
        async with conn.transaction():
            for row in rows:
                result.checked += 1
                token = bytes(row["token"])
                if box.is_current(token):
                    result.current += 1
                    continue
                try:
                    new = box.reseal(token)
                except ValueError:
                    result.unreadable.append(row["label"])
                    continue
                status = await conn.execute(reseal_sql, row["id"], new, token)
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
