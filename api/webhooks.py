"""Push webhook receivers under /api/v1/webhooks/ (SPEC §3, docs/webhooks.md).

Each receiver: authenticate the sender (constant-time) → parse its format into events
(core/webhooks.py) → insert them into the `webhook_events` inbox in one statement, duplicates
skipped by their dedupe key → answer 202 (200 when nothing new) → send
`process_webhook_event(id)` to the priority queue. The send happens after the commit and
after the answer; when it fails (Redis down) the event is still pending in Postgres and the
scheduler's sweep (worker/sweep.py) queues it again, so nothing is lost (api/publish.py).
The worker applies every pending event from one message (worker/inbox.py), so in a burst a
message waits NOTICE_DELAY_SECONDS and the events stored meanwhile need none of their own:
it leaves after they committed. A burst of pushes costs a few messages, not one per event.

A wrong secret is counted like a wrong API key (api/throttle.py, scope `webhook`, keyed by
receiver and client address): past the limit, wrong attempts get 429; a correct secret is
always served. Docker Hub and Quay put the secret in the URL path: logged paths and metric
labels never show it (api/request_log.py, api/metrics.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import orjson
import structlog
from aiohttp import web

from api.errors import BadRequestError, UnauthorizedError, json_response
from api.keys import POOL, SETTINGS
from api.publish import send_tasks_later
from api.throttle import count_failure, request_client
from core import metrics
from core import webhook_auth as whauth
from core import webhooks as wh
from core.queue import PROCESS_EVENT_TASK

log = structlog.get_logger("api.webhooks")


@dataclass
class InboxNotice:
    """Per app: whether a `process_webhook_event` message is due (scheduled, not sent yet),
    and when the last events were stored (the loop's clock)."""

    due: bool = False
    last_stored: float = float("-inf")


INBOX_NOTICE = web.AppKey("inbox_notice", InboxNotice)
# Within a burst (events less than BURST_GAP_SECONDS apart) a message goes this long after
# the event that needs it: the events stored meanwhile share it, and the worker's
# transaction and enrichment. Outside a burst it goes at once.
NOTICE_DELAY_SECONDS = 0.02
BURST_GAP_SECONDS = 0.02


def _notify_worker(app: web.Application, ids: list[int]) -> None:
    """After the answer: a message for these committed events, unless one is due already:
    it leaves after their commit, and the worker applies every pending event from one
    message (worker/inbox.py). The message names the newest id."""
    notice = app[INBOX_NOTICE]
    if not ids:
        return
    loop = asyncio.get_running_loop()
    burst = loop.time() - notice.last_stored < BURST_GAP_SECONDS
    notice.last_stored = loop.time()
    if notice.due:
        return
    notice.due = True

    def send() -> None:
        # events committed from now on need a message of their own
        notice.due = False
        send_tasks_later(app, PROCESS_EVENT_TASK, [[max(ids)]])

    loop.call_later(NOTICE_DELAY_SECONDS if burst else 0, send)


# One statement: all events of a delivery are stored, or none. RETURNING yields only the
# rows that were new, so a duplicate delivery queues nothing.
INSERT_EVENTS_SQL = """
INSERT INTO webhook_events (source, dedupe_key, kind, host, repository, tag, digest, build_state,
                            occurred_at, payload, build_id)
SELECT e.source, e.dedupe_key, e.kind, e.host, e.repository, e.tag, e.digest, e.build_state,
       COALESCE(e.occurred_at, now()), e.payload::jsonb, e.build_id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::text[])
       AS e (source, dedupe_key, kind, host, repository, tag, digest, build_state, occurred_at, payload,
             build_id)
ON CONFLICT ON CONSTRAINT webhook_events_dedupe_key_key DO NOTHING
RETURNING id
"""


async def store_events(conn: asyncpg.Pool | asyncpg.Connection, events: list[wh.WebhookEvent]) -> list[int]:
    """Insert events into the inbox; the ids of those not seen before."""
    if not events:
        return []
    cols: list[list[object]] = [[] for _ in range(11)]
    for ev in events:
        row = (
            ev.source, ev.dedupe_key, ev.kind, ev.host, ev.repository, ev.tag, ev.digest,
            ev.build_state, ev.occurred_at, orjson.dumps(ev.payload).decode(), ev.build_id,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    rows = await conn.fetch(INSERT_EVENTS_SQL, *cols)
    return [r["id"] for r in rows]


def _secrets(request: web.Request, receiver: str, host: str | None) -> list[str]:
    found = whauth.receiver_secrets(receiver, host, request.app[SETTINGS])
    if not found:
        raise UnauthorizedError(
            "webhook receivers are disabled: the service has no WEBHOOK_SECRET configured"
        )
    return found


async def _refuse(receiver: str, request: web.Request) -> UnauthorizedError:
    """The 401 to raise for a wrong secret; raises 429 instead when the sender is throttled."""
    log.info("webhook.unauthorized", receiver=receiver, client=request_client(request))
    metrics.webhook_event(receiver, "unauthorized")
    await count_failure(request, "webhook", receiver)
    return UnauthorizedError(f"the {receiver} webhook secret is missing or wrong")


def _pinned_host(request: web.Request) -> str | None:
    host = request.query.get("host", "").strip().lower()
    return host or None


Parser = Callable[[object], list[wh.WebhookEvent]]


async def _accept(request: web.Request, receiver: str, parse: Parser, body: bytes) -> web.Response:
    try:
        events = wh.unique_events(parse(wh.load_json(body)))
    except wh.MalformedPayloadError as exc:
        log.info("webhook.malformed", receiver=receiver, error=str(exc))
        metrics.webhook_event(receiver, "malformed")
        raise BadRequestError(f"malformed {receiver} webhook: {exc}") from None
    ids = await store_events(request.app[POOL], events)
    log.info("webhook.received", receiver=receiver, events=len(events), new=len(ids))
    metrics.WEBHOOK_EVENTS.labels(source=receiver, outcome="accepted").inc(len(ids))
    metrics.WEBHOOK_EVENTS.labels(source=receiver, outcome="duplicate").inc(len(events) - len(ids))
    _notify_worker(request.app, ids)
    return json_response(
        {"accepted": len(ids), "duplicates": len(events) - len(ids)}, status=202 if ids else 200
    )


# ------------------------------------------------------------------ receivers


async def receive_registry(request: web.Request) -> web.Response:
    """CNCF distribution notifications: `Authorization: Bearer <secret>`."""
    host = _pinned_host(request)
    if not whauth.bearer_ok(request.headers.get("Authorization"), _secrets(request, wh.REGISTRY, host)):
        raise await _refuse(wh.REGISTRY, request)
    body = await request.read()
    return await _accept(request, wh.REGISTRY, lambda b: wh.parse_registry(b, host=host), body)


async def receive_dockerhub(request: web.Request) -> web.Response:
    """Docker Hub: the secret is the last path component of the URL."""
    host = _pinned_host(request)
    if not whauth.token_ok(request.match_info.get("token"), _secrets(request, wh.DOCKERHUB, host)):
        raise await _refuse(wh.DOCKERHUB, request)
    body = await request.read()
    return await _accept(request, wh.DOCKERHUB, lambda b: wh.parse_dockerhub(b, host=host), body)


async def receive_harbor(request: web.Request) -> web.Response:
    """Harbor v2 (default or CloudEvents): the policy's auth header, `Bearer <secret>` or bare."""
    host = _pinned_host(request)
    if not whauth.bearer_ok(request.headers.get("Authorization"), _secrets(request, wh.HARBOR, host)):
        raise await _refuse(wh.HARBOR, request)
    body = await request.read()
    return await _accept(request, wh.HARBOR, lambda b: wh.parse_harbor(b, host=host), body)


async def receive_quay(request: web.Request) -> web.Response:
    """Quay: the secret is a path component; build notifications add `?event=<build_…>`."""
    host = _pinned_host(request)
    if not whauth.token_ok(request.match_info.get("token"), _secrets(request, wh.QUAY, host)):
        raise await _refuse(wh.QUAY, request)
    event = request.query.get("event") or None
    body = await request.read()
    return await _accept(request, wh.QUAY, lambda b: wh.parse_quay(b, host=host, event=event), body)


async def receive_build(request: web.Request) -> web.Response:
    """Generic build status: `X-Signature-256: sha256=<HMAC-SHA256 of the body>`."""
    secrets = _secrets(request, wh.BUILD, None)
    body = await request.read()
    header = next((request.headers[h] for h in wh.SIGNATURE_HEADERS if h in request.headers), None)
    if not whauth.signature_ok(body, header, secrets):
        raise await _refuse(wh.BUILD, request)
    return await _accept(request, wh.BUILD, wh.parse_build, body)


async def receive_github(request: web.Request) -> web.Response:
    """GitHub (ghcr.io): `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`; the event
    type is `X-GitHub-Event` (`registry_package` is used, `ping` and the rest are answered 200)."""
    host = _pinned_host(request)
    secrets = _secrets(request, wh.GITHUB, host)
    body = await request.read()
    if not whauth.signature_ok(body, request.headers.get("X-Hub-Signature-256"), secrets):
        raise await _refuse(wh.GITHUB, request)
    event = request.headers.get("X-GitHub-Event", "")
    if event != "registry_package":
        log.info("webhook.ignored", receiver=wh.GITHUB, github_event=event[:64])
        return json_response({"accepted": 0, "duplicates": 0, "ignored": event or "no X-GitHub-Event"})
    return await _accept(request, wh.GITHUB, lambda b: wh.parse_github(b, host=host), body)


def add_routes(app: web.Application) -> None:
    """Register the receivers (called by create_app; no I/O)."""
    app[INBOX_NOTICE] = InboxNotice()
    slash = "{slash:/?}"
    base = "/api/v1/webhooks"
    app.router.add_post(f"{base}/registry{slash}", receive_registry)
    app.router.add_post(f"{base}/dockerhub/{{token:[^/]+}}{slash}", receive_dockerhub)
    app.router.add_post(f"{base}/harbor{slash}", receive_harbor)
    app.router.add_post(f"{base}/quay/{{token:[^/]+}}{slash}", receive_quay)
    app.router.add_post(f"{base}/build{slash}", receive_build)
    app.router.add_post(f"{base}/github{slash}", receive_github)
