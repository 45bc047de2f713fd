"""Where the service is and who the caller is, read the way the Tutum SDK and CLI read them.

Precedence, highest first (as python-tutum did):

1. `TUTUM_AUTH`: a whole `Authorization` header value (`ApiKey user:key`, `Basic …`).
2. `TUTUM_USER` + `TUTUM_APIKEY` (sent as HTTP Basic, the key as password).
3. `TUTUM_USER` + `TUTUM_PASS` (the old password variable; here the password is an API key).
4. `~/.tutum`, section `[auth]`: `basic_auth` (base64 of `user:key`, what `tutum login`
   writes), else `user` + `apikey` (sent as `ApiKey user:key`).

The service: `TUTUM_BASE_URL` (ending in `/api/v1/`), else `TUTUM_REST_HOST` + `/api/v1/`,
else `DEFAULT_REST_HOST`.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

DEFAULT_REST_HOST = "http://127.0.0.1:8000"  # `registry-sync dev`
CONFIG_FILE = "~/.tutum"
AUTH_SECTION = "auth"


@dataclass(frozen=True)
class Settings:
    """Where to send requests and the `Authorization` header to send (None: no credentials).

    `source` says where the credentials came from, for error messages; `user` is the account
    name when it is known.
    """

    base_url: str
    authorization: str | None = None
    user: str | None = None
    source: str = "none"

    def __repr__(self) -> str:  # the header is a secret
        return f"Settings(base_url={self.base_url!r}, user={self.user!r}, source={self.source!r})"


def base_url_from(env: Mapping[str, str]) -> str:
    if url := env.get("TUTUM_BASE_URL"):
        return url.rstrip("/") + "/"
    host = env.get("TUTUM_REST_HOST") or DEFAULT_REST_HOST
    return f"{host.rstrip('/')}/api/v1/"


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def _user_of_basic(token: str) -> str | None:
    try:
        return base64.b64decode(token, validate=True).decode().partition(":")[0] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def read_config_file(path: str | os.PathLike[str] = CONFIG_FILE) -> tuple[str | None, str | None]:
    """(Authorization header, user) from the `[auth]` section; (None, None) when the file or
    the section is missing or unreadable, as the old SDK ignored a broken file."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(Path(path).expanduser())
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None, None
    if not parser.has_section(AUTH_SECTION):
        return None, None
    section = parser[AUTH_SECTION]
    # The old CLI wrote the value quoted in one of its two login paths.
    token = section.get("basic_auth", "").strip().strip('"').strip("'")
    if token:
        return f"Basic {token}", _user_of_basic(token)
    user, apikey = section.get("user", "").strip(), section.get("apikey", "").strip()
    if user and apikey:
        return f"ApiKey {user}:{apikey}", user
    return None, None


def load_settings(env: Mapping[str, str] | None = None,
                  config_file: str | os.PathLike[str] = CONFIG_FILE) -> Settings:
    """Settings from the environment and the config file, in the SDK's precedence."""
    env = os.environ if env is None else env
    base_url = base_url_from(env)
    user = env.get("TUTUM_USER")
    if header := env.get("TUTUM_AUTH"):
        return Settings(base_url, header, user, "TUTUM_AUTH")
    if user and (key := env.get("TUTUM_APIKEY")):
        return Settings(base_url, basic(user, key), user, "TUTUM_USER/TUTUM_APIKEY")
    if user and (password := env.get("TUTUM_PASS")):
        return Settings(base_url, basic(user, password), user, "TUTUM_USER/TUTUM_PASS")
    header, file_user = read_config_file(config_file)
    if header:
        return Settings(base_url, header, file_user, str(config_file))
    return Settings(base_url)


class ClientArguments(TypedDict):
    base_url: str
    authorization: str | None
    user: str | None


def client_arguments(env: Mapping[str, str] | None = None,
                     config_file: str | os.PathLike[str] = CONFIG_FILE) -> ClientArguments:
    """`base_url`, `authorization` and `user` for a client, from `load_settings`."""
    s = load_settings(env, config_file)
    return {"base_url": s.base_url, "authorization": s.authorization, "user": s.user}


def write_config_file(user: str, key: str, path: str | os.PathLike[str] = CONFIG_FILE) -> Path:
    """Store `basic_auth` in the `[auth]` section as `tutum login` always did; other sections
    of an existing file are kept. The file is readable by its owner only (it holds a key)."""
    target = Path(path).expanduser()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(target)
    except (configparser.Error, UnicodeDecodeError):
        parser = configparser.ConfigParser(interpolation=None)  # unreadable: start afresh
    if not parser.has_section(AUTH_SECTION):
        parser.add_section(AUTH_SECTION)
    for stale in ("user", "apikey"):
        parser.remove_option(AUTH_SECTION, stale)
    parser.set(AUTH_SECTION, "basic_auth", base64.b64encode(f"{user}:{key}".encode()).decode())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        parser.write(f)
    target.chmod(0o600)
    return target
