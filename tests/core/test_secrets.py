"""SECRET_KEY: HKDF-derived keys, release 1's tokens, rotation with `registry-sync rotate-secret`,
the strength check, and settings that never print a secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet, InvalidToken

from core import receivers
from core.accounts import create_account
from core.crypto import GENERATE_HINT, CredentialBox, Credentials, check_secret_key, weak_secret_reason
from core.secret_rotation import rotate_credentials
from core.settings import Settings
from tests.conftest import create_database, insert_image, unique
from tests.support.services import worker_index

ROOT = Path(__file__).resolve().parents[2]
OLD = secrets.token_urlsafe(32)
NEW = secrets.token_urlsafe(32)


def release1_seal(secret: str, creds: Credentials) -> bytes:
    """A token exactly as release 1 made it: Fernet key = urlsafe_b64(SHA-256(secret))."""
    key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
    return Fernet(key).encrypt(f'{{"username":"{creds.username}","password":"{creds.password}"}}'.encode())


def test_keys_are_derived_with_hkdf_and_release1_tokens_still_open() -> None:
    box = CredentialBox(NEW)
    sealed = box.seal(Credentials("alice", "s3cret-pw"))
    assert b"s3cret-pw" not in sealed and b"alice" not in sealed
    assert box.open(sealed) == Credentials("alice", "s3cret-pw")
    # not the SHA-256 derivation any more
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(hashlib.sha256(NEW.encode()).digest())).decrypt(sealed)
    legacy = release1_seal(NEW, Credentials("bob", "pw"))
    assert box.open(legacy) == Credentials("bob", "pw") and not box.is_current(legacy)
    assert box.is_current(box.reseal(legacy))
    with pytest.raises(ValueError, match="SECRET_KEY"):
        CredentialBox(secrets.token_urlsafe(32)).open(sealed)
    assert CredentialBox(secrets.token_urlsafe(32), old_keys=(NEW,)).open(sealed).password == "s3cret-pw"


@pytest.mark.parametrize("weak", ["test-secret-key", "x" * 64, "ab" * 40, "changeme" * 5, ""])
def test_weak_keys_are_refused_with_a_way_to_make_one(weak: str) -> None:
    assert weak_secret_reason(weak) is not None
    with pytest.raises(ValueError) as err:
        check_secret_key(weak)
    assert GENERATE_HINT in str(err.value) and (not weak or weak not in str(err.value))


def test_generated_keys_pass() -> None:
    for _ in range(50):
        check_secret_key(secrets.token_urlsafe(32))
        check_secret_key(secrets.token_hex(32))
        check_secret_key(base64.b64encode(os.urandom(32)).decode())


@pytest.mark.parametrize("command", ["web", "worker", "beat"])
def test_processes_refuse_a_weak_secret_key_at_start(command: str) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
           "REDIS_URL": "redis://127.0.0.1:1/0", "SECRET_KEY": "short-key"}
    done = subprocess.run([sys.executable, "-m", "cli.main", command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "SECRET_KEY is too weak" in done.stderr and GENERATE_HINT in done.stderr
    assert "short-key" not in done.stderr + done.stdout


def test_settings_never_print_a_secret() -> None:
    values = {
        "SECRET_KEY": NEW, "SECRET_KEY_OLD": f"{OLD},older-key-value", "WEBHOOK_SECRET": "hook-value-123",
        "WEBHOOK_SECRETS": "quay=quay-value-456,reg.example=reg-value-789",
        "DATABASE_URL": "postgresql://app:db-pass-word@db.example:5432/rs?sslmode=require",
        "REDIS_URL": "redis://:redis-pass-word@redis.example:6379/0",
    }
    s = Settings.from_env(values)
    secret_fields = {f.name for f in fields(Settings) if f.metadata.get("secret")}
    receivers = ("registry", "dockerhub", "harbor", "quay", "build", "github")
    assert secret_fields == {"secret_key", "secret_key_old", "webhook_secret", "webhook_secrets",
                             "docker_hub_token", *(f"webhook_secret_{r}" for r in receivers)}
    assert all(f.type == "str" for f in fields(Settings) if f.name in secret_fields)
    for text in (repr(s), str(s), f"{s}", repr([s])):
        for leaked in (NEW, OLD, "older-key-value", "hook-value-123", "quay-value-456", "reg-value-789",
                       "db-pass-word", "redis-pass-word"):
            assert leaked not in text
        assert "db.example:5432/rs" in text and "redis.example:6379/0" in text
    assert s.database_url == values["DATABASE_URL"] and s.secret_key == NEW  # still plain strings


@pytest.fixture
async def rotation_db(postgres_dsn: str) -> str:
    """A database of its own: rotation walks every image, and the session database holds
    other tests' credentials sealed with the session key."""
    return await create_database(postgres_dsn, f"rs_rotation_{worker_index()}")


@pytest.fixture
async def rotation_pool(rotation_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(rotation_db, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_rotation_reseals_every_credential_and_the_old_key_can_go(rotation_pool: asyncpg.Pool) -> None:
    pool = rotation_pool
    old_box = CredentialBox(OLD)
    names = [f"registry.local/{unique('rot')}/app{i}" for i in range(7)]
    ids = [await insert_image(pool, name=n, credentials=old_box.seal(Credentials(f"u{i}", f"p{i}")))
           for i, n in enumerate(names[:5])]
    ids.append(await insert_image(pool, name=names[5], credentials=release1_seal(OLD, Credentials("u5", "p5"))))
    ids.append(await insert_image(pool, name=names[6], credentials=release1_seal(NEW, Credentials("u6", "p6"))))

    rotating = CredentialBox(NEW, old_keys=(OLD,))
    seen: list[int] = []
    async with pool.acquire() as conn:
        first = await rotate_credentials(conn, rotating, batch_size=2, progress=lambda r: seen.append(r.checked))
        second = await rotate_credentials(conn, rotating, batch_size=2)
    assert first.unreadable == [] and first.resealed >= 7 and seen == sorted(seen) and len(seen) >= 4
    assert second.resealed == 0 and second.unreadable == []  # idempotent

    new_only = CredentialBox(NEW)  # SECRET_KEY_OLD emptied
    for i, image_id in enumerate(ids):
        token = await pool.fetchval("SELECT credentials FROM images WHERE id = $1", image_id)
        assert new_only.open(token) == Credentials(f"u{i}", f"p{i}")
        assert new_only.is_current(token)


async def test_rotation_reseals_build_tokens_too(rotation_pool: asyncpg.Pool) -> None:
    pool = rotation_pool
    old_box = CredentialBox(OLD)
    with_both = await insert_image(pool, name=f"quay.io/{unique('rot')}/app", build_token=old_box.seal_text("tok-1"),
                                   credentials=old_box.seal(Credentials("robot", "pw")))
    token_only = await insert_image(pool, name=f"quay.io/{unique('rot')}/app", build_token=old_box.seal_text("tok-2"))
    unreadable = await insert_image(pool, name=f"quay.io/{unique('rot')}/gone",
                                    build_token=CredentialBox("x" * 8 + NEW).seal_text("tok-3"))
    async with pool.acquire() as conn:
        result = await rotate_credentials(conn, CredentialBox(NEW, old_keys=(OLD,)))
    assert any(u.endswith("/gone (build_token)") for u in result.unreadable)
    new_only = CredentialBox(NEW)
    for image_id, secret in ((with_both, "tok-1"), (token_only, "tok-2")):
        token = await pool.fetchval("SELECT build_token FROM images WHERE id = $1", image_id)
        assert new_only.is_current(token) and new_only.open_text(token) == secret
    creds = await pool.fetchval("SELECT credentials FROM images WHERE id = $1", with_both)
    assert new_only.open(creds).username == "robot"
    with pytest.raises(ValueError):
        new_only.open_text(await pool.fetchval("SELECT build_token FROM images WHERE id = $1", unreadable))


async def test_rotate_secret_command_reports_progress_and_unreadable_credentials(
    rotation_db: str, rotation_pool: asyncpg.Pool,
) -> None:
    lost_name = f"registry.local/{unique('lost')}/app"
    await insert_image(rotation_pool, name=lost_name,
                       credentials=CredentialBox(secrets.token_urlsafe(32)).seal(Credentials("a", "b")))
    kept = await insert_image(rotation_pool, name=f"registry.local/{unique('kept')}/app",
                              credentials=CredentialBox(OLD).seal(Credentials("c", "d")))
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": rotation_db, "SECRET_KEY": NEW,
           "SECRET_KEY_OLD": OLD, "LOG_LEVEL": "warning"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cli.main", "rotate-secret", "--batch-size", "50"], env=env,
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # the lost one is reported
    assert "1 re-sealed" in done.stdout and lost_name in done.stderr and "SECRET_KEY_OLD" in done.stderr
    assert NEW not in done.stdout + done.stderr and OLD not in done.stdout + done.stderr
    token = await rotation_pool.fetchval("SELECT credentials FROM images WHERE id = $1", kept)
    assert CredentialBox(NEW).open(token) == Credentials("c", "d")


async def test_rotation_reseals_account_receiver_secrets_too(rotation_pool: asyncpg.Pool) -> None:
    pool = rotation_pool
    async with pool.acquire() as conn:
        account, _ = await create_account(conn, unique("rcv"))
        lost, _ = await create_account(conn, unique("lost"))
    before = {r.sender: r.secret for r in await receivers.account_receivers(pool, CredentialBox(OLD), account.id)}
    await receivers.account_receivers(pool, CredentialBox(secrets.token_urlsafe(32)), lost.id)  # no key opens them
    async with pool.acquire() as conn:
        result = await rotate_credentials(conn, CredentialBox(NEW, old_keys=(OLD,)))
    assert result.resealed >= len(before)
    assert sorted(result.unreadable) == sorted(f"the {s} receiver of account {lost.username}" for s in before)
    new_only = CredentialBox(NEW)  # SECRET_KEY_OLD emptied: the same secrets, sealed anew
    after = {r.sender: r.secret for r in await receivers.account_receivers(pool, new_only, account.id)}
    assert after == before
