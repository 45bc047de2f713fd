"""Prometheus metrics shared by the API, the workers and the scheduler (SPEC §7).

The metric objects are module-level on purpose: prometheus-client keys its registry and its
multiprocess files by metric name, so each metric must exist once per process, whoever
imports it first. They hold no connection and do no I/O.

Several processes on one host (`registry-sync web --workers N`, the consumer processes of
`registry-sync worker`) share one set of counters through prometheus-client's multiprocess
mode: each process writes its samples to files in `PROMETHEUS_MULTIPROC_DIR`, and a scrape
reads and sums all of them. The variable must be set before a process imports
prometheus-client, so the parent (`serve`, `run_worker`) sets it with
`prepare_multiprocess_dir()` before it spawns the children.

Label values are bounded: routes are templates, registries are configured hosts, statuses
are HTTP codes or one of a few words.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# `*_created` series double every counter's output and no dashboard here uses them.
disable_created_metrics()

# Buckets from 5 ms (a cached GET) to a minute (a sync of a big image on a slow registry).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "registry_sync_http_requests_total",
    "API requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "registry_sync_http_request_duration_seconds",
    "API request latency, by method, route template and status",
    ["method", "route", "status"],
    buckets=_BUCKETS,
)
SYNCS = Counter(
    "registry_sync_syncs_total",
    "Image syncs finished, by outcome: synced, failed (error recorded), skipped (leased "
    "elsewhere or gone), error (unexpected; the image was handed back)",
    ["outcome"],
)
SYNC_DURATION = Histogram(
    "registry_sync_sync_duration_seconds", "Duration of one image sync, by outcome", ["outcome"],
    buckets=_BUCKETS,
)
REGISTRY_REQUESTS = Counter(
    "registry_sync_registry_requests_total",
    "HTTP exchanges with registries, by registry host and status: the HTTP code, or "
    "'timeout' / 'connection_error' when no answer came",
    ["registry", "status"],
)
WEBHOOK_EVENTS = Counter(
    "registry_sync_webhook_events_total",
    "Webhook events received, by source (registry, hub, harbor, quay, generic) and outcome "
    "(e.g. accepted, duplicate, rejected, processed, failed)",
    ["source", "outcome"],
)
LEASE_EXPIRIES = Counter(
    "registry_sync_lease_expiries_total",
    "Leases found lapsed when the scheduler claimed an image again (a worker died or "
    "overran LEASE_SECONDS)",
)

# The registry budget (worker/registry/budget.py) and the worker's execution model.
BUDGET_WAIT = Histogram(
    "registry_sync_budget_wait_seconds",
    "Time a registry request waited for its host's fleet-wide budget (rate, concurrency, a "
    "short pause) before it was sent, by registry",
    ["registry"],
    buckets=_BUCKETS,
)
BUDGET_LATE = Counter(
    "registry_sync_budget_late_total",
    "Registry requests that woke more than one rate interval after their turn (their worker "
    "process was busy) and took a new turn rather than crowd the next ones, by registry",
    ["registry"],
)
BUDGET_BUSY = Counter(
    "registry_sync_budget_busy_total",
    "Syncs handed back for later because their registry host could not be asked now, by "
    "registry and reason: paused, concurrency, rate, pulls (fleet budget: the host's, or the "
    "image's credentials'), share (the host holds its share of a worker process) or account "
    "(the image's account holds its share)",
    ["registry", "reason"],
)
BUDGET_PAUSES = Counter(
    "registry_sync_budget_pauses_total",
    "Pauses of a registry host for the whole fleet, by registry and cause: 429 (Retry-After; "
    "its anonymous requests), 429_credentials (the requests with one set of credentials) or "
    "ratelimit (Docker Hub's ratelimit-remaining at its floor)",
    ["registry", "cause"],
)
BUDGET_IN_FLIGHT = Gauge(
    "registry_sync_budget_in_flight",
    "Registry requests in flight now, by registry (summed over a host's worker processes)",
    ["registry"],
    multiprocess_mode="livesum",
)
BUDGET_PULLS_REMAINING = Gauge(
    "registry_sync_budget_pulls_remaining",
    "Anonymous pulls left in the registry's own window as it last reported them (Docker Hub's "
    "ratelimit-remaining), by registry",
    ["registry"],
    multiprocess_mode="livemostrecent",
)
BUDGET_FALLBACKS = Counter(
    "registry_sync_budget_fallbacks_total",
    "Times a worker process found Redis unreachable and applied the registry limits on its own",
)
WORKER_IN_FLIGHT = Gauge(
    "registry_sync_worker_in_flight",
    "Syncs and webhook events in flight in the worker's consumer processes, by queue",
    ["queue"],
    multiprocess_mode="livesum",
)
WORKER_CAPACITY = Gauge(
    "registry_sync_worker_capacity",
    "How many syncs and events the worker's consumer processes may run at once, by queue",
    ["queue"],
    multiprocess_mode="livesum",
)
BEAT_QUEUE_FULL = Counter(
    "registry_sync_beat_queue_full_total",
    "Scheduler ticks that claimed nothing because the routine queue held BEAT_QUEUE_MAX messages",
)
RETENTION_DELETED = Counter(
    "registry_sync_retention_deleted_total",
    "Rows deleted by the scheduler's retention, by table",
    ["table"],
)

P = ParamSpec("P")


def webhook_event(source: str, outcome: str) -> None:
    """Count one webhook event. For the receivers (api/webhooks.py) and the event processor
    (worker/inbox.py); keep `source` and `outcome` to a few fixed words."""
    WEBHOOK_EVENTS.labels(source=source, outcome=outcome).inc()


def registry_request(registry: str, status: int | str) -> None:
    """Count one exchange with `registry`: its HTTP status, or 'timeout'/'connection_error'."""
    REGISTRY_REQUESTS.labels(registry=registry, status=str(status)).inc()


def timed_sync(fn: Callable[P, Awaitable[str]]) -> Callable[P, Awaitable[str]]:
    """Wrap the sync service so every call is counted and timed by the outcome it returns;
    an exception counts as outcome 'error' and propagates unchanged."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = await fn(*args, **kwargs)
            return outcome
        finally:
            SYNCS.labels(outcome=outcome).inc()
            SYNC_DURATION.labels(outcome=outcome).observe(time.perf_counter() - started)

    return wrapper


def multiprocess_dir() -> str | None:
    """The shared metrics folder of this process family, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """Make the children about to be spawned share metrics: (folder, whether we created it).

    An operator-set PROMETHEUS_MULTIPROC_DIR is used (and emptied: files of a previous run
    would be counted again); otherwise a fresh temporary folder is made and exported. Call it
    in the parent before spawning; give each `web`/`worker` instance a folder of its own."""
    existing = multiprocess_dir()
    if existing:
        os.makedirs(existing, exist_ok=True)
        for path in glob.glob(os.path.join(existing, "*.db")):
            os.remove(path)
        return existing, False
    path = tempfile.mkdtemp(prefix="registry-sync-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path, True


def remove_multiprocess_dir(path: str, created: bool) -> None:
    """Undo `prepare_multiprocess_dir` when the parent exits (only a folder it created)."""
    if created:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def scrape_registry() -> CollectorRegistry:
    """What a scrape of this process reports: the sum over the process family in
    multiprocess mode, else this process's own registry."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return registry


def serve_metrics(port: int, host: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:  # noqa: S104 - scraped from other hosts
    """Serve `scrape_registry()` over HTTP on `port` from a daemon thread (worker parent,
    scheduler). Any path answers with the metrics; stop it with `server.shutdown()`."""
    return start_http_server(port, addr=host, registry=scrape_registry())
