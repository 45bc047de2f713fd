"""Push webhook receivers under /api/v1/webhooks/ (SPEC §3, docs/webhooks.md).

Two kinds per sender (registry, dockerhub, harbor, quay, build, github):
- operator receivers, `/api/v1/webhooks/<sender>/` (Docker Hub, Quay: `…/<secret>/`): secrets
  from the environment, each bound to one registry host (core/webhook_auth.py); the events
  are about that host, whatever the payload or the `Host` header says;
- account receivers, `/api/v1/webhooks/<sender>/<rcv_id>/` (Docker Hub, Quay: `…/<secret>/`):
  each account's own (core/receivers.py, api/receivers.py); the events speak for that
  account only (worker/event_scope.py decides what they may change).

Each receiver: authenticate the sender (constant-time) → parse its format into events
(core/webhooks.py; at most WEBHOOK_MAX_EVENTS per request, else 413) → insert them into the
`webhook_events` inbox in one statement, duplicates skipped by their dedupe key, each event's
time at most its receipt → answer 202 (200 when nothing new) → send
`process_webhook_event(id)` to the priority queue. The send happens after the commit and
after the answer; when it fails (Redis down) the event is still pending in Postgres and the
scheduler's sweep (worker/sweep.py) queues it again, so nothing is lost (api/publish.py).
The worker applies every pending event from one message (worker/inbox.py), so in a burst a
message waits NOTICE_DELAY_SECONDS and the events stored meanwhile need none of their own:
it leaves after they committed. A burst of pushes costs a few messages, not one per event.

A wrong secret is counted like a wrong API key (api/throttle.py, scope `webhook`, keyed by
receiver and client address): past the limit, wrong attempts get 429; a correct secret is
always served. Docker Hub and Quay put the secret in the URL path: logged paths and metric
labels never show it, nor an account receiver's id (api/request_log.py, api/metrics.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg
import orjson
import structlog
from aiohttp import web

from api.errors import BadRequestError, ForbiddenError, PayloadTooLargeError, UnauthorizedError, json_response
from api.keys import CREDENTIAL_BOX, POOL, SETTINGS
from api.publish import send_tasks_later
from api.throttle import count_failure, request_client
from core import metrics, receivers
from core import webhook_auth as whauth
from core import webhooks as wh
from core.names import InvalidNameError
from core.queue import PROCESS_EVENT_TASK

log = structlog.get_logger("api.webhooks")


@dataclass
class InboxNotice:
    """Per app: whether a `process_webhook_event` message is due (scheduled, not sent yet),
    and when the last events were stored (the loop's clock)."""

    due: bool = False
    last_stored: float = float("-inf")


INBOX_NOTICE = web.AppKey("inbox_notice", InboxNotice)
# receiver → {registry host: secret} (core/webhook_auth.py operator_bindings), read once
OPERATOR_SECRETS = web.AppKey("operator_secrets", Mapping)
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
# rows that were new, so a duplicate delivery queues nothing. An event's time is at most its
# receipt (SPEC §3): a sender's clock far ahead (or a forged year 9999) must not outrank
# every later event, nor make later pushes "older" than a delete.
INSERT_EVENTS_SQL = """
INSERT INTO webhook_events (source, dedupe_key, kind, host, repository, tag, digest, build_state,
                            occurred_at, payload, build_id, account_id)
SELECT e.source, e.dedupe_key, e.kind, e.host, e.repository, e.tag, e.digest, e.build_state,
       LEAST(COALESCE(e.occurred_at, now()), now()), e.payload::jsonb, e.build_id, $12
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::text[])
       AS e (source, dedupe_key, kind, host, repository, tag, digest, build_state, occurred_at, payload,
             build_id)
ON CONFLICT ON CONSTRAINT webhook_events_dedupe_key_key DO NOTHING
RETURNING id
"""


async def store_events(
    conn: asyncpg.Pool | asyncpg.Connection, events: list[wh.WebhookEvent], account_id: int | None = None,
) -> list[int]:
    """Insert events into the inbox, sent by the account whose receiver they came through
    (None: an operator receiver); the ids of those not seen before. Duplicates are found within
    a sender's scope: an account's deliveries are keyed apart, so no account can store another
    sender's next event (a predictable key) first and have the real one dropped as a duplicate."""
    if not events:
        return []
    scope = "" if account_id is None else f"account{account_id}:"
    cols: list[list[object]] = [[] for _ in range(11)]
    for ev in events:
        row = (
            ev.source, scope + ev.dedupe_key, ev.kind, ev.host, ev.repository, ev.tag, ev.digest,
            ev.build_state, ev.occurred_at, orjson.dumps(ev.payload).decode(), ev.build_id,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    rows = await conn.fetch(INSERT_EVENTS_SQL, *cols, account_id)
    return [r["id"] for r in rows]


async def _refuse(receiver: str, request: web.Request) -> UnauthorizedError:
    """The 401 to raise for a wrong secret; raises 429 instead when the sender is throttled."""
    log.info("webhook.unauthorized", receiver=receiver, client=request_client(request))
    metrics.webhook_event(receiver, "unauthorized")
    await count_failure(request, "webhook", receiver)
    return UnauthorizedError(f"the {receiver} webhook secret is missing or wrong")


def _pinned_host(request: web.Request) -> str | None:
    """`?host=`, canonical (an invalid one is a 400)."""
    raw = request.query.get("host", "").strip()
    if not raw:
        return None
    try:
        return whauth.canonical_host(raw)
    except InvalidNameError as exc:
        raise BadRequestError(f"?host=: {exc}", field="host") from None


def _events(request: web.Request, sender: Sender, body: bytes, host: str | None) -> list[wh.WebhookEvent]:
    """The body's events (400 when malformed); 413 when it names more than WEBHOOK_MAX_EVENTS:
    nothing of it is stored, since keeping a part would drop the rest without a trace."""
    try:
        events = wh.unique_events(sender.parse(request, wh.load_json(body), host))
    except wh.MalformedPayloadError as exc:
        log.info("webhook.malformed", receiver=sender.name, error=str(exc))
        metrics.webhook_event(sender.name, "malformed")
        raise BadRequestError(f"malformed {sender.name} webhook: {exc}") from None
    limit = request.app[SETTINGS].webhook_max_events
    if len(events) > limit:
        log.info("webhook.too_many", receiver=sender.name, events=len(events), limit=limit)
        metrics.webhook_event(sender.name, "too_many")
        raise PayloadTooLargeError(
            f"this {sender.name} webhook names {len(events)} events; one request may name at most "
            f"{limit} (WEBHOOK_MAX_EVENTS): nothing was stored", events=len(events), limit=limit)
    return events


async def _accept(request: web.Request, receiver: str, events: list[wh.WebhookEvent],
                  account_id: int | None) -> web.Response:
    ids = await store_events(request.app[POOL], events, account_id)
    log.info("webhook.received", receiver=receiver, events=len(events), new=len(ids), account_id=account_id)
    metrics.WEBHOOK_EVENTS.labels(source=receiver, outcome="accepted").inc(len(ids))
    metrics.WEBHOOK_EVENTS.labels(source=receiver, outcome="duplicate").inc(len(events) - len(ids))
    _notify_worker(request.app, ids)
    return json_response(
        {"accepted": len(ids), "duplicates": len(events) - len(ids)}, status=202 if ids else 200
    )


def _not_a_change(request: web.Request, sender: Sender) -> web.Response | None:
    """GitHub's `ping` and its events other than `registry_package`: 200, nothing stored."""
    event = request.headers.get("X-GitHub-Event", "")
    if sender.name != wh.GITHUB or event == "registry_package":
        return None
    log.info("webhook.ignored", receiver=wh.GITHUB, github_event=event[:64])
    return json_response({"accepted": 0, "duplicates": 0, "ignored": event or "no X-GitHub-Event"})


# ------------------------------------------------------------------ senders

Accepts = Callable[[web.Request, bytes, str], bool]
Parse = Callable[[web.Request, object, str | None], list[wh.WebhookEvent]]


@dataclass(frozen=True)
class Sender:
    """How a sender kind authenticates (`accepts(request, body, secret)`) and how its body
    becomes events (`parse(request, json, host)`: `host` is the one the receiver speaks for,
    None to read it from the payload)."""

    name: str
    accepts: Accepts
    parse: Parse
    names_its_host: bool = False  # the payload names the host itself (the generic build event)


def _bearer(request: web.Request, _body: bytes, secret: str) -> bool:
    """CNCF distribution (`Authorization: Bearer <secret>`), Harbor (its auth header, bare too)."""
    return whauth.bearer_ok(request.headers.get("Authorization"), [secret])


def _url_token(request: web.Request, _body: bytes, secret: str) -> bool:
    """Docker Hub, Quay: the secret is the URL's last path component."""
    return whauth.token_ok(request.match_info.get("token"), [secret])


def _signed(*headers: str) -> Accepts:
    """An HMAC-SHA256 signature of the body in the first of `headers` present."""
    def accepts(request: web.Request, body: bytes, secret: str) -> bool:
        header = next((request.headers[h] for h in headers if h in request.headers), None)
        return whauth.signature_ok(body, header, [secret])
    return accepts


SENDERS = {s.name: s for s in (
    Sender(wh.REGISTRY, _bearer, lambda _r, b, h: wh.parse_registry(b, host=h)),
    Sender(wh.DOCKERHUB, _url_token, lambda _r, b, h: wh.parse_dockerhub(b, host=h)),
    Sender(wh.HARBOR, _bearer, lambda _r, b, h: wh.parse_harbor(b, host=h)),
    Sender(wh.QUAY, _url_token, lambda r, b, h: wh.parse_quay(b, host=h, event=r.query.get("event") or None)),
    Sender(wh.BUILD, _signed(*wh.SIGNATURE_HEADERS), lambda _r, b, _h: wh.parse_build(b), names_its_host=True),
    Sender(wh.GITHUB, _signed("X-Hub-Signature-256"), lambda _r, b, h: wh.parse_github(b, host=h)),
)}


# ------------------------------------------------------------------ receivers


def operator_receiver(sender: Sender) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`/api/v1/webhooks/<sender>/…`: secrets from the environment, each bound to a registry
    host (core/webhook_auth.py). The host of the events is the bound host of the secret that
    matched, never the payload's or the `Host` header's. When the secret is bound to several
    hosts (the same secret given to several, or the generic build event, whose payload names
    its image), an event naming a host the secret is not bound to refuses the request (403)."""

    async def receive(request: web.Request) -> web.Response:
        bindings = request.app[OPERATOR_SECRETS][sender.name]
        if not bindings:
            raise UnauthorizedError(
                f"the {sender.name} receiver is disabled: no WEBHOOK_SECRET (or WEBHOOK_SECRETS entry) "
                "is bound to a registry host for it")
        pinned = _pinned_host(request)
        if pinned is not None:  # `?host=` chooses among the bindings, it adds none
            bindings = {h: s for h, s in bindings.items() if h == pinned}
        body = await request.read()
        hosts = whauth.accepted_hosts(bindings, lambda secret: sender.accepts(request, body, secret))
        if not hosts:
            raise await _refuse(sender.name, request)
        if (answer := _not_a_change(request, sender)) is not None:
            return answer
        one = next(iter(hosts)) if len(hosts) == 1 and not sender.names_its_host else None
        events = _events(request, sender, body, one)
        stray = sorted({ev.host for ev in events} - hosts)
        if stray:
            log.info("webhook.foreign_host", receiver=sender.name, hosts=stray[:5])
            metrics.webhook_event(sender.name, "foreign_host")
            raise ForbiddenError(
                f"this {sender.name} secret is bound to {', '.join(sorted(hosts))}, not to {', '.join(stray[:5])}:"
                " nothing was stored (an account's own receiver, GET /api/v1/receiver/, takes any host)")
        return await _accept(request, sender.name, events, None)

    return receive


def account_receiver(sender: Sender) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`/api/v1/webhooks/<sender>/<receiver id>/…` (core/receivers.py): the events speak for
    the receiver's account (a fact for its images, a hint for the others: worker/event_scope.py),
    about the host the payload names, or `?host=`."""

    async def receive(request: web.Request) -> web.Response:
        found = await receivers.find(request.app[POOL], request.app[CREDENTIAL_BOX],
                                     request.match_info["receiver"], sender.name)
        body = await request.read()
        if found is None or not found.secret or not sender.accepts(request, body, found.secret):
            raise await _refuse(sender.name, request)
        if (answer := _not_a_change(request, sender)) is not None:
            return answer
        events = _events(request, sender, body, _pinned_host(request))
        return await _accept(request, sender.name, events, found.account_id)

    return receive


def add_routes(app: web.Application) -> None:
    """Register the receivers (called by create_app; no I/O but parsing the operator secrets,
    which raises ConfigError for a malformed WEBHOOK_SECRETS)."""
    app[INBOX_NOTICE] = InboxNotice()
    app[OPERATOR_SECRETS] = whauth.operator_bindings(app[SETTINGS])
    slash = "{slash:/?}"
    base = "/api/v1/webhooks"
    account = f"{{receiver:{receivers.ID_PATTERN}}}"
    for name, sender in SENDERS.items():
        token = "/{token:[^/]+}" if name in receivers.URL_SECRET else ""
        app.router.add_post(f"{base}/{name}{token}{slash}", operator_receiver(sender))
        app.router.add_post(f"{base}/{name}/{account}{token}{slash}", account_receiver(sender))
