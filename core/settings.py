"""Configuration from environment variables (documented in docs/configuration.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _bool(raw: str, name: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _hosts(raw: str) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in raw.split(",") if h.strip())


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    redis_url: str = ""
    secret_key: str = ""
    secret_key_old: str = ""  # comma-separated keys that still decrypt (rotation); see secret_keys_old
    port: int = 8000
    bind_host: str = "0.0.0.0"  # noqa: S104 - a server in a container listens on all interfaces
    log_level: str = "info"
    log_format: str = "json"
    max_body_bytes: int = 64 * 1024
    page_limit_max: int = 1000
    db_pool_min: int = 2
    db_pool_max: int = 10
    auth_cache_seconds: float = 10.0
    # sync and scheduling
    sync_interval_seconds: float = 300.0
    sync_backoff_base_seconds: float = 10.0
    sync_backoff_max_seconds: float = 3600.0
    lease_seconds: float = 120.0
    beat_interval_seconds: float = 1.0
    beat_batch_size: int = 200
    task_batch_size: int = 20
    registry_concurrency: int = 8
    registry_timeout_seconds: float = 30.0
    platform: str = "linux/amd64"
    allow_private_registries: bool = False
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    tutum_registry_host: str = ""
    docker_hub_registry_url: str = "https://registry-1.docker.io"
    docker_hub_api_url: str = "https://hub.docker.com"
    # freshness (issue 5): inspect-on-GET of Hub names, the events stream
    inspect_timeout_seconds: float = 10.0
    events_buffer: int = 256
    events_ping_seconds: float = 25.0
    webhook_secret: str = ""
    webhook_secrets: str = ""  # per receiver / registry host overrides: "quay=s1,reg.example=s2"
    data_dir: str = ".data"
    metrics_port: int = 0  # worker parent and beat serve /metrics here; 0: not served
    # polling at scale: execution model, fleet-wide registry budgets, fair sharing
    worker_concurrency: int = 100  # syncs/events in flight per consumer process
    worker_drain_seconds: float = 60.0  # SIGTERM: how long in-flight work may finish
    registry_limits: str = ""  # JSON {host: {concurrency, rate, burst, pulls, pull_window}}
    registry_wait_max_seconds: float = 2.0  # longer budget waits hand the image back
    host_share: float = 0.25  # most of a process's in-flight syncs one registry host may hold
    slow_host_share: float = 0.25  # most all recently timing-out hosts may hold together
    docker_hub_username: str = ""
    docker_hub_token: str = field(default="", repr=False, metadata={"secret": True})
    hub_default_max_tags: int = 10  # Docker Hub images without a tag policy: most recent N
    # adaptive schedules (SYNC_INTERVAL_SECONDS is where an image starts)
    sync_interval_min: float = 60.0
    sync_interval_max: float = 3600.0
    sync_interval_idle: float = 86400.0  # catalog images nobody has read for CATALOG_IDLE_SECONDS
    catalog_idle_seconds: float = 7 * 86400.0
    read_mark_flush_seconds: float = 5.0  # the API writes "read" marks at most this often
    # the scheduler's queue bound and retention
    beat_queue_max: int = 50  # routine messages waiting in Redis beyond which beat claims nothing
    retention_interval_seconds: float = 600.0
    retention_batch: int = 1000
    hub_inspection_retention_seconds: float = 86400.0
    webhook_event_retention_seconds: float = 7 * 86400.0
    layer_retention_seconds: float = 86400.0  # unreferenced this long: deleted

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its upper-case environment variable; overrides win."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            try:
                if f.type == "bool":
                    values[f.name] = _bool(raw, f.name.upper())
                elif f.type == "int":
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                elif f.name == "insecure_registries":
                    values[f.name] = _hosts(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ConfigError(f"{f.name.upper()} is not a valid {f.type}: {raw!r}") from exc
        values.update(overrides)
        return cls(**values)

    def require(self, *names: str) -> None:
        missing = [n.upper() for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")

    @property
    def secret_keys_old(self) -> tuple[str, ...]:
        """Previous SECRET_KEYs, newest first: credentials sealed with them still open."""
        return tuple(k.strip() for k in self.secret_key_old.split(",") if k.strip())

    @property
    def platform_os(self) -> str:
        return self.platform.split("/")[0]

    @property
    def platform_arch(self) -> str:
        return self.platform.split("/")[1]
