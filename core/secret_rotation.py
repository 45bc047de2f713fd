"""`registry-sync rotate-secret`: re-seal every stored secret with SECRET_KEY: registry
credentials and build tokens of images, account receivers' secrets, and the signing secrets
of notification subscriptions (the current one and a rotated one still honoured).

Run it after setting SECRET_KEY to the new key and SECRET_KEY_OLD to the old one(s), with the
new settings already rolled out (web and worker then open both). Afterwards no secret needs
SECRET_KEY_OLD, and the old keys can be dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from core.crypto import CredentialBox

# Each batch query (id > $1, $2 rows) yields `id`, `label` (what to name when no key opens it)
# and `token`. Each re-seal is a compare-and-swap ($1 id, $2 new, $3 old): a secret changed
# meanwhile (a PATCH of credentials, a rotation of receivers or of a subscription's secret) is
# already sealed with the new key (the API seals with SECRET_KEY) and must not be overwritten
# with the old value.
CREDENTIALS_BATCH_SQL = """
SELECT id, name AS label, credentials AS token FROM images
 WHERE credentials IS NOT NULL AND id > $1
 ORDER BY id
 LIMIT $2
"""
CREDENTIALS_RESEAL_SQL = "UPDATE images SET credentials = $2 WHERE id = $1 AND credentials = $3"
BUILD_TOKENS_BATCH_SQL = """
SELECT id, name || ' (build_token)' AS label, build_token AS token FROM images
 WHERE build_token IS NOT NULL AND id > $1
 ORDER BY id
 LIMIT $2
"""
BUILD_TOKENS_RESEAL_SQL = "UPDATE images SET build_token = $2 WHERE id = $1 AND build_token = $3"
RECEIVERS_BATCH_SQL = """
SELECT r.id, 'the ' || r.sender || ' receiver of account ' || a.username AS label, r.secret AS token
  FROM receivers AS r JOIN accounts AS a ON a.id = r.account_id
 WHERE r.id > $1
 ORDER BY r.id
 LIMIT $2
"""
RECEIVERS_RESEAL_SQL = "UPDATE receivers SET secret = $2 WHERE id = $1 AND secret = $3"
SUBSCRIPTIONS_BATCH_SQL = """
SELECT id, 'subscription ' || id AS label, secret AS token FROM subscriptions
 WHERE id > $1
 ORDER BY id
 LIMIT $2
"""
SUBSCRIPTIONS_RESEAL_SQL = "UPDATE subscriptions SET secret = $2 WHERE id = $1 AND secret = $3"
PREVIOUS_SUBSCRIPTION_SECRETS_BATCH_SQL = """
SELECT id, 'subscription ' || id || ' (its previous secret)' AS label, previous_secret AS token FROM subscriptions
 WHERE previous_secret IS NOT NULL AND id > $1
 ORDER BY id
 LIMIT $2
"""
PREVIOUS_SUBSCRIPTION_SECRETS_RESEAL_SQL = (
    "UPDATE subscriptions SET previous_secret = $2 WHERE id = $1 AND previous_secret = $3"
)
SEALED = (
    (CREDENTIALS_BATCH_SQL, CREDENTIALS_RESEAL_SQL),
    (BUILD_TOKENS_BATCH_SQL, BUILD_TOKENS_RESEAL_SQL),
    (RECEIVERS_BATCH_SQL, RECEIVERS_RESEAL_SQL),
    (SUBSCRIPTIONS_BATCH_SQL, SUBSCRIPTIONS_RESEAL_SQL),
    (PREVIOUS_SUBSCRIPTION_SECRETS_BATCH_SQL, PREVIOUS_SUBSCRIPTION_SECRETS_RESEAL_SQL),
)


@dataclass
class RotationResult:
    checked: int = 0
    resealed: int = 0
    current: int = 0  # already sealed with SECRET_KEY (a second run finds only these)
    unreadable: list[str] = field(default_factory=list)  # labels of the secrets no key opens


async def rotate_credentials(
    conn: asyncpg.Connection,
    box: CredentialBox,
    *,
    batch_size: int = 500,
    progress: Callable[[RotationResult], None] | None = None,
) -> RotationResult:
    """Re-seal, batch by batch (one short transaction each), every stored secret (see the
    module's docstring) not sealed with SECRET_KEY yet. Idempotent; safe while the service
    runs. Secrets that no key opens are left as they are and listed in the result."""
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
