"""Configuration from environment variables (documented in docs/configuration.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET = {"secret": True}  # field metadata: the value never appears in a repr, log or error


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
    # secret settings: str fields marked SECRET, left out of repr (see __repr__)
    secret_key: str = field(default="", repr=False, metadata=SECRET)
    # comma-separated keys that still decrypt (rotation); see secret_keys_old
    secret_key_old: str = field(default="", repr=False, metadata=SECRET)
    port: int = 8000
    bind_host: str = "0.0.0.0"  # noqa: S104 - a server in a container listens on all interfaces
    log_level: str = "info"
    log_format: str = "json"
    max_body_bytes: int = 64 * 1024
    page_limit_max: int = 1000
    list_buffer_bytes: int = 4 * 1024 * 1024  # a larger list body is streamed, without an ETag
    db_pool_min: int = 2
    db_pool_max: int = 10
    auth_cache_seconds: float = 10.0
    # sync and scheduling
    sync_interval_seconds: float = 300.0
    sync_backoff_base_seconds: float = 10.0
    sync_backoff_max_seconds: float = 3600.0
    # a repository that answers "not found" is retried from the base backoff for this long
    # (registered before its first push), then like a permanent error (worker/sync.py)
    repository_missing_grace_seconds: float = 3600.0
    lease_seconds: float = 120.0
    beat_interval_seconds: float = 1.0
    beat_batch_size: int = 200
    task_batch_size: int = 20
    registry_concurrency: int = 8
    registry_timeout_seconds: float = 30.0
    platform: str = "linux/amd64"
    # bounds of one sync (fair sharing: SPEC §4)
    sync_deadline_seconds: float = 900.0
    max_tags_per_image: int = 10_000
    max_tag_pages: int = 500
    sync_tag_concurrency: int = 8
    allow_private_registries: bool = False
    # CIDRs, addresses and host names the worker may reach even when private (core/address_policy.py)
    allowed_registry_networks: str = ""
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    # more INSECURE_REGISTRIES, one host a line, read again when the file changes (core/insecure.py;
    # `registry-sync dev` keeps DATA_DIR/insecure_registries there)
    insecure_registries_file: str = ""
    tutum_registry_host: str = ""
    docker_hub_registry_url: str = "https://registry-1.docker.io"
    docker_hub_api_url: str = "https://hub.docker.com"
    offline: bool = False  # Docker Hub is never contacted (`registry-sync dev --offline`)
    # freshness (issue 5): inspect-on-GET of Hub names, the events stream
    inspect_timeout_seconds: float = 10.0
    events_buffer: int = 256
    events_ping_seconds: float = 25.0
    events_coalesce_seconds: float = 0.1
    events_fanout_share: float = 0.5
    events_max_per_account: int = 20
    events_in_web: bool = True
    stream_port: int = 8001
    webhook_secret: str = field(default="", repr=False, metadata=SECRET)
    # operator receivers bound to registry hosts: "registry@reg.example=s1,quay=s2,reg.example=s3"
    webhook_secrets: str = field(default="", repr=False, metadata=SECRET)
    # each receiver's own secret, instead of WEBHOOK_SECRET (core/webhook_auth.py operator_bindings)
    webhook_secret_registry: str = field(default="", repr=False, metadata=SECRET)
    webhook_secret_dockerhub: str = field(default="", repr=False, metadata=SECRET)
    webhook_secret_harbor: str = field(default="", repr=False, metadata=SECRET)
    webhook_secret_quay: str = field(default="", repr=False, metadata=SECRET)
    webhook_secret_build: str = field(default="", repr=False, metadata=SECRET)
    webhook_secret_github: str = field(default="", repr=False, metadata=SECRET)
    # failed API-key and webhook-secret attempts (api/throttle.py); proxies whose
    # X-Forwarded-For is believed
    auth_failure_limit: int = 20
    auth_failure_window_seconds: float = 60.0
    trusted_proxies: str = ""
    webhook_max_events: int = 100  # events one webhook request may name; more: 413, nothing stored
    webhook_hint_interval_seconds: float = 5.0  # at most one hinted sync per image this often (worker/inbox.py)
    # what one account may make the service do per window (api/account_limits.py; 0: no limit)
    account_limit_window_seconds: float = 60.0
    account_registration_limit: int = 120  # POST /api/v1/image/
    account_resync_limit: int = 120  # re-sync requests (…/build/, a PATCH that queues a sync)
    account_hub_lookup_limit: int = 60  # GETs of Docker Hub names the catalog does not have
    webhook_event_retention_seconds: float = 7 * 86400.0  # processed events: dedupe, tombstones, build order
    build_timeout_seconds: float = 7200.0  # a tag Building this long falls back to the registry
    # build states polled from Quay's build API (worker/quay_builds.py): its hosts (host[:port]),
    # how often an image with a running build is read again, and how many builds one read asks for
    quay_hosts: frozenset[str] = field(default_factory=lambda: frozenset({"quay.io"}))
    build_poll_seconds: float = 15.0
    quay_build_limit: int = 10
    # lists (issue 14): name buckets that let a deep `offset` skip only one bucket's rows
    list_bucket_size: int = 1000
    list_upkeep_seconds: float = 60.0
    data_dir: str = ".data"
    metrics_port: int = 0  # worker parent and beat serve /metrics here; 0: not served
    # polling at scale: execution model, fleet-wide registry budgets, fair sharing
    worker_concurrency: int = 100  # syncs/events in flight per consumer process
    worker_drain_seconds: float = 60.0  # SIGTERM: how long in-flight work may finish
    registry_limits: str = ""  # JSON {host: {concurrency, rate, burst, pulls, pull_window}}
    registry_wait_max_seconds: float = 2.0  # longer budget waits hand the image back
    host_share: float = 0.25  # most of a process's in-flight syncs one registry host may hold
    slow_host_share: float = 0.25  # most all recently timing-out hosts may hold together
    account_share: float = 0.25  # most of a process's in-flight syncs one account (or the catalog) may hold
    docker_hub_username: str = ""
    docker_hub_token: str = field(default="", repr=False, metadata=SECRET)
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
    layer_retention_seconds: float = 86400.0  # unreferenced this long: deleted
    # tag history and outgoing notifications (SPEC §7; worker/deliveries.py)
    tag_history_keep: int = 100  # entries kept per tag (0: all)
    tag_history_retention_seconds: float = 0.0  # closed entries older than this go (0: never)
    # seconds before each attempt of a delivery: the first at once, then the Standard Webhooks schedule
    notify_retry_schedule: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    notify_retry_jitter: float = 0.1  # each wait is scaled by a random factor in [1 - j, 1 + j]
    notify_retry_after_max_seconds: float = 86400.0  # a longer Retry-After is capped
    notify_timeout_seconds: float = 15.0
    notify_concurrency: int = 200  # subscriptions one deliverer process serves at once
    notify_batch: int = 50  # deliveries of one subscription per turn
    notify_poll_seconds: float = 1.0  # the deliverer looks for due work at least this often
    notify_round_seconds: float = 0.02  # under load, one fan-out+claim and one log write per this
    notify_in_worker: bool = True  # `registry-sync worker` runs deliverer processes
    notify_processes: int = 1  # how many: they share the work through leases
    notify_rotation_grace_seconds: float = 86400.0  # a rotated secret still signs this long
    notify_log_retention_seconds: float = 30 * 86400.0  # finished deliveries and their attempts
    notify_max_subscriptions: int = 100  # per account
    ui_session_seconds: float = 8 * 3600.0  # a dashboard session (sign-in at /ui/) ends after this long

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
                elif f.name in ("insecure_registries", "quay_hosts"):
                    values[f.name] = _hosts(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ConfigError(f"{f.name.upper()} is not a valid {f.type}: {raw!r}") from exc
        values.update(overrides)
        return cls(**values)

    def __repr__(self) -> str:
        """Every setting but the secret ones (shown as '***' when set); passwords in
        DATABASE_URL and REDIS_URL are masked. str() is the same."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = "***" if value else ""
            elif f.name.endswith("_url") and isinstance(value, str):
                value = mask_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    def require(self, *names: str) -> None:
        missing = [n.upper() for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")

    @property
    def secret_keys_old(self) -> tuple[str, ...]:
        """Previous SECRET_KEYs, newest first: credentials sealed with them still open."""
        return tuple(k.strip() for k in self.secret_key_old.split(",") if k.strip())

    @property
    def notify_schedule(self) -> tuple[float, ...]:
        """NOTIFY_RETRY_SCHEDULE as seconds: the wait before attempt 1, 2, …; its length is
        the number of attempts."""
        try:
            waits = tuple(float(x) for x in self.notify_retry_schedule.split(",") if x.strip())
        except ValueError:
            raise ConfigError(
                f"NOTIFY_RETRY_SCHEDULE must be comma-separated seconds, got {self.notify_retry_schedule!r}"
            ) from None
        if not waits or any(w < 0 for w in waits):
            raise ConfigError("NOTIFY_RETRY_SCHEDULE must list at least one wait, none negative")
        return waits

    @property
    def platform_os(self) -> str:
        return self.platform.split("/")[0]

    @property
    def platform_arch(self) -> str:
        return self.platform.split("/")[1]


def mask_url(url: str) -> str:
    """`url` with the password of its user part and any `password=` query value as '***'."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password:
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
        query = parts.query
        if "password" in query.lower():
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)],
                safe="/*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL at all: say nothing about it
        return "***"
