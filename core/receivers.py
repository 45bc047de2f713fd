"""Account receivers (SPEC §3): each account's own webhook URL and secret per sender kind.

An event that arrives through an account receiver speaks for that account's images only
(worker/event_scope.py). A receiver is a row of `receivers`: a public id that its URL carries
(`rcv_…`, not a secret) and a secret sealed with SECRET_KEY (core/crypto.py), so the account
can read it again (`GET /api/v1/receiver/`). Docker Hub and Quay can only be given a URL, so
theirs carries the secret too. Rotation replaces every receiver of the account (new ids and
secrets): the old URLs and secrets stop at once, since every delivery reads its row.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from core import webhooks as wh
from core.crypto import CredentialBox

# The order of GET /api/v1/receiver/ (and of the senders in the spec).
SENDERS = (wh.REGISTRY, wh.DOCKERHUB, wh.HARBOR, wh.QUAY, wh.GITHUB, wh.BUILD)
URL_SECRET = frozenset({wh.DOCKERHUB, wh.QUAY})  # no header, no signature: the URL carries it
ID_PREFIX = "rcv_"
ID_PATTERN = "rcv_[A-Za-z0-9_-]{22}"  # the route's pattern: 16 random bytes, URL-safe base64


@dataclass(frozen=True)
class Receiver:
    sender: str
    public_id: str
    secret: str

    @property
    def url(self) -> str:
        """The path to give the sender (Docker Hub and Quay: with the secret in it)."""
        base = f"/api/v1/webhooks/{self.sender}/{self.public_id}/"
        return f"{base}{self.secret}/" if self.sender in URL_SECRET else base

    def wire(self) -> dict[str, str | None]:
        """As `GET /api/v1/receiver/` shows it: the secret is null where the URL carries it."""
        return {"sender": self.sender, "url": self.url,
                "secret": None if self.sender in URL_SECRET else self.secret}


@dataclass(frozen=True)
class Found:
    """The receiver a delivery names: its account and its secret (None: unreadable)."""

    account_id: int
    secret: str | None


def _new_id() -> str:
    return ID_PREFIX + secrets.token_urlsafe(16)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits: also safe in a URL path


INSERT_SQL = """
INSERT INTO receivers (account_id, sender, public_id, secret)
SELECT $1, u.sender, u.public_id, u.secret
  FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u (sender, public_id, secret)
ON CONFLICT ON CONSTRAINT receivers_account_sender_key DO NOTHING
"""
LIST_SQL = "SELECT sender, public_id, secret FROM receivers WHERE account_id = $1"


async def account_receivers(conn: asyncpg.Pool | asyncpg.Connection, box: CredentialBox,
                            account_id: int) -> list[Receiver]:
    """The account's receivers, one per sender kind, in SENDERS order; those it lacks are
    created first (an account gets them on its first look; two first looks at once agree).
    A secret no key opens (SECRET_KEY changed without SECRET_KEY_OLD) shows as "": rotate."""
    rows = await conn.fetch(LIST_SQL, account_id)
    missing = [s for s in SENDERS if s not in {r["sender"] for r in rows}]
    if missing:
        await _insert(conn, box, account_id, missing)
        rows = await conn.fetch(LIST_SQL, account_id)
    by_sender = {r["sender"]: r for r in rows}
    return [Receiver(s, by_sender[s]["public_id"], _open(box, by_sender[s]["secret"]) or "") for s in SENDERS]


DELETE_SQL = "DELETE FROM receivers WHERE account_id = $1"


async def rotate(pool: asyncpg.Pool, box: CredentialBox, account_id: int) -> list[Receiver]:
    """New receivers (ids and secrets) for every sender kind; the old ones stop at once."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(DELETE_SQL, account_id)
        await _insert(conn, box, account_id, SENDERS)
        return await account_receivers(conn, box, account_id)


async def _insert(conn: asyncpg.Pool | asyncpg.Connection, box: CredentialBox, account_id: int,
                  senders: Sequence[str]) -> None:
    fresh = [(s, _new_id(), _new_secret()) for s in senders]
    await conn.execute(INSERT_SQL, account_id, [f[0] for f in fresh], [f[1] for f in fresh],
                       [box.seal_text(f[2]) for f in fresh])


FIND_SQL = "SELECT account_id, secret FROM receivers WHERE public_id = $1 AND sender = $2"


async def find(pool: asyncpg.Pool, box: CredentialBox, public_id: str, sender: str) -> Found | None:
    """The receiver of this id and sender kind; None when there is none (rotated away)."""
    row = await pool.fetchrow(FIND_SQL, public_id, sender)
    return Found(row["account_id"], _open(box, row["secret"])) if row else None


def _open(box: CredentialBox, sealed: bytes) -> str | None:
    try:
        return box.open_text(sealed)
    except ValueError:
        return None
