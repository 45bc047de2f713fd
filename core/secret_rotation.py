"""`registry-sync rotate-secret`: re-seal every stored credential (and build token) with SECRET_KEY.

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
SELECT id, name, credentials, build_token FROM images
 WHERE (credentials IS NOT NULL OR build_token IS NOT NULL) AND id > $1
 ORDER BY id
 LIMIT $2
"""
# Compare-and-swap: a secret changed by a PATCH meanwhile is already sealed with the new key
# (the API seals with SECRET_KEY) and must not be overwritten with the old value.
RESEAL_SQL = "UPDATE images SET credentials = $2 WHERE id = $1 AND credentials = $3"
RESEAL_BUILD_TOKEN_SQL = "UPDATE images SET build_token = $2 WHERE id = $1 AND build_token = $3"  # noqa: S105
_RESEAL = {"credentials": RESEAL_SQL, "build_token": RESEAL_BUILD_TOKEN_SQL}


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
    """Re-seal, batch by batch (one short transaction each), every credential and build token
    not sealed with SECRET_KEY yet. Idempotent; safe while the service runs. Secrets that no
    key opens are left as they are and listed in the result (a build token as "<name> (build_token)")."""
    result = RotationResult()
    last_id = 0
    while True:
        rows = await conn.fetch(BATCH_SQL, last_id, batch_size)
        if not rows:
            return result
        async with conn.transaction():
            for row in rows:
                for column, reseal_sql in _RESEAL.items():
                    if row[column] is None:
                        continue
                    result.checked += 1
                    token = bytes(row[column])
                    if box.is_current(token):
                        result.current += 1
                        continue
                    try:
                        new = box.reseal(token)
                    except ValueError:
                        what = row["name"] if column == "credentials" else f"{row['name']} ({column})"
                        result.unreadable.append(what)
                        continue
                    status = await conn.execute(reseal_sql, row["id"], new, token)
                    result.resealed += status.endswith(" 1")
                    result.current += status.endswith(" 0")  # changed meanwhile: sealed anew
        last_id = rows[-1]["id"]
        if progress:
            progress(result)
