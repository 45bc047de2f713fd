"""Accounts and API keys. Keys are random 256-bit secrets stored as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    is_admin: bool


class AccountExistsError(Exception):
    pass


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> str:
    """256 random bits as 64 hex characters."""
    return secrets.token_hex(32)


INSERT_ACCOUNT_SQL = """
INSERT INTO accounts (username, is_admin) VALUES ($1, $2)
ON CONFLICT (username) DO NOTHING
RETURNING id
"""
INSERT_KEY_SQL = "INSERT INTO api_keys (account_id, key_hash) VALUES ($1, $2)"


async def create_account(conn: asyncpg.Connection, username: str, *, is_admin: bool = False) -> tuple[Account, str]:
    """Create an account with one API key; returns the account and the plain key (shown once).

    Raises AccountExistsError if the name is taken, ValueError if it is not a valid user name.
    """
    async with conn.transaction():
        try:
            account_id = await conn.fetchval(INSERT_ACCOUNT_SQL, username, is_admin)
        except asyncpg.CheckViolationError as exc:
            raise ValueError(
                "user names are 1-64 characters: lower-case letters, digits, '.', '_', '-'"
            ) from exc
        if account_id is None:
            raise AccountExistsError(f"account {username!r} already exists")
        key = new_api_key()
        await conn.execute(INSERT_KEY_SQL, account_id, hash_key(key))
    return Account(account_id, username, is_admin), key


async def add_api_key(conn: asyncpg.Connection, username: str) -> str | None:
    """A new key for an existing account, or None when there is no such account."""
    account_id = await conn.fetchval("SELECT id FROM accounts WHERE username = $1", username)
    if account_id is None:
        return None
    key = new_api_key()
    await conn.execute(INSERT_KEY_SQL, account_id, hash_key(key))
    return key


FIND_ACCOUNT_BY_KEY_SQL = """
SELECT a.id, a.username, a.is_admin, k.key_hash
  FROM accounts AS a JOIN api_keys AS k ON k.account_id = a.id
 WHERE a.username = $1 AND k.key_hash = $2
"""


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, username: str, key: str) -> Account | None:
    """The account owning this (user, key) pair, or None."""
    digest = hash_key(key)
    row = await conn.fetchrow(FIND_ACCOUNT_BY_KEY_SQL, username, digest)
    # The lookup is by digest; compare again in constant time so no branch depends on bytes.
    if row is None or not secrets.compare_digest(row["key_hash"], digest):
        return None
    return Account(row["id"], row["username"], row["is_admin"])


ACCOUNT_BY_ID_SQL = "SELECT id, username, is_admin FROM accounts WHERE id = $1"


async def account_by_id(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> Account | None:
    """The account `account_id`, or None when there is none."""
    row = await conn.fetchrow(ACCOUNT_BY_ID_SQL, account_id)
    return Account(row["id"], row["username"], row["is_admin"]) if row else None
