"""The events stream's hub (SPEC §5): one LISTEN connection per process, coalescing, fan-out.

Postgres triggers (schema.sql, freshness section) NOTIFY `registry_sync_events` from the
transaction that changes an image or a tag, so only committed changes are heard, in commit
order. The hub turns them into wire messages and writes them to every subscriber allowed to
see them (the shared catalog: everyone but the accounts that shadow the name with an image
of their own, api/stream_clients.py Shadows; an own image: its owner).

Cost per change does not depend on the number of subscribers beyond one socket write each.
Changes are gathered for EVENTS_COALESCE_SECONDS (from the start of the previous round of
writes, so the first change after a quiet spell goes out at once; longer when a round's CPU
time passes EVENTS_FANOUT_SHARE of its time), encoded once (WebSocket frame, SSE record) onto
a short log, and a round writes to each subscriber one pre-encoded batch of what the log holds
past what it has had (the same bytes for every client that has had the same). A round writes
to SLICE subscribers per turn of the event loop, so notifications are read while it runs: a
change heard mid-round reaches the subscribers not reached yet at once, the others in the next
round (the kernel's part of a socket write is most of a round's cost: tens of milliseconds for
thousands of subscribers). Nobody waits on a client: one whose unsent bytes pass EVENTS_BUFFER
messages (counted at 1 KiB each) is closed with a reason.

Coalescing, within a window: a second `update` of a resource replaces the first (latest
state, moved to its latest position); creates and deletes are always sent. More than
TAG_BURST tag changes of one image become one `update` of the image (the sync of a
10,000-tag image is one message, not 10,000): clients re-read its tags. The database already
does this within one statement (schema.sql, tags_notify_events).

The same connection listens on `registry_sync_inspect`, which wakes the requests waiting for
a Docker Hub lookup (api/hub_lookup.py). An API process that does not serve the stream
(EVENTS_IN_WEB=0: `registry-sync stream` processes do) listens on that channel only.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from api import serializers
from api.stream_clients import MESSAGE_BYTES, Batch, Shadows, Subscriber, TooManyStreamsError

log = structlog.get_logger("api.stream")

EVENTS_CHANNEL = "registry_sync_events"
INSPECT_CHANNEL = "registry_sync_inspect"
HEALTH_EVERY = 10.0  # seconds between checks that the LISTEN connection still answers
RECONNECT_MAX = 10.0
TAG_BURST = 50  # tag changes of one image in one window that become one image update
SLICE = 500  # subscribers written per turn of the event loop in a round (a few milliseconds)


class EventHub:
    """The process's LISTEN connection, its pending changes and its subscribers."""

    def __init__(self, dsn: str, *, buffer_size: int = 256, window: float = 0.1, fanout_share: float = 0.5,
                 max_per_account: int = 20, serve_events: bool = True) -> None:
        self._dsn = dsn
        self.limit = buffer_size * MESSAGE_BYTES
        self.window = window
        self.fanout_share = fanout_share  # of one core's time that the rounds may take (0: no limit)
        self.max_per_account = max_per_account
        self.serve_events = serve_events
        self._everyone: set[Subscriber] = set()
        self._by_account: dict[int, set[Subscriber]] = {}
        self._inspect_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._tag_counts: dict[tuple[Any, str], int] = {}
        self._received = 0  # changes received so far; a pending change's "seq" is its number
        self._logged = 0  # changes up to this number are on the log (or were coalesced away)
        self._log: list[tuple[int, int | None, str, bytes]] = []  # (seq, owner, name, encoded message)
        self._log_seqs: list[int] = []
        # account -> seq of the latest change on the log that makes the account's batch differ
        # from the catalog's: a change of its own, or a catalog change of a name it shadows
        self._differs_at: dict[int, int] = {}
        self._shadows = Shadows()  # the catalog names that subscribed accounts shadow
        self._batches: dict[tuple[int, int | None], tuple[tuple[bytes, bytes, bytes], int]] = {}
        self._round: tuple[Subscriber, ...] = ()  # the subscribers of the round under way
        self._round_at = 0  # how far that round has got
        self._round_started = 0.0
        self._round_cpu = 0.0  # CPU time the round under way has taken so far
        self._flush_at: asyncio.TimerHandle | asyncio.Handle | None = None
        self._last_flush = 0.0  # when the last round started, or later when it took long
        self.delivered = 0  # messages written to subscribers, for metrics and benchmarks
        self.dropped = 0  # subscribers closed for lagging

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def subscribers(self) -> int:
        return len(self._everyone)

    # ------------------------------------------------------------ connection

    async def start(self) -> None:
        """Connect once (fail fast at startup), then keep the connection in the background."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="events-listen")

    async def stop(self) -> None:
        self.close_all("the server is shutting down")
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close(timeout=2)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _: self._lost.set())
            if self.serve_events:
                await conn.add_listener(EVENTS_CHANNEL, self._on_event)
            await conn.add_listener(INSPECT_CHANNEL, self._on_inspect)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        log.info("events.listening", events=self.serve_events)

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), HEALTH_EVERY)
            conn = self._conn
            if conn is not None and not self._lost.is_set():
                try:
                    await conn.execute("SELECT 1", timeout=5)
                    continue
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    pass
            log.warning("events.listen_lost")
            self._conn = None
            if conn is not None:
                conn.terminate()
            # Events may have been missed: say so rather than let clients believe they are current.
            self.close_all("the events stream was interrupted; reconnect")
            while self._conn is None:
                try:
                    await self._connect()
                    delay = 0.5
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("events.reconnect_failed", error=type(exc).__name__, retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)

    # ------------------------------------------------------------ coalescing

    def _on_event(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.add(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.exception("events.bad_payload")

    def add(self, data: dict[str, Any]) -> None:
        """Queue one change (a trigger's payload) for the next flush."""
        owner, kind, name = data.get("owner"), data["type"], data["name"]
        self._received += 1
        data["seq"] = self._received
        image_key = ("update", "image", owner, name, None)
        if kind == "imagetag":
            pending = self._pending.get(image_key)
            if pending is not None and pending.get("burst"):
                self._merge_image_update(image_key, data)
                return
            count = self._tag_counts[(owner, name)] = self._tag_counts.get((owner, name), 0) + 1
            if count > TAG_BURST:
                for stale in [k for k, v in self._pending.items()
                              if v["type"] == "imagetag" and v.get("owner") == owner and v["name"] == name]:
                    del self._pending[stale]
                self._merge_image_update(image_key, data)
                return
        if data["action"] == "update":
            key: tuple[Any, ...] = ("update", kind, owner, name, data.get("tag"))
            self._pending.pop(key, None)  # the latest state, at its latest position
        else:
            key = ("once", self._received)
        self._pending[key] = data
        self._schedule()

    def _merge_image_update(self, key: tuple[Any, ...], tag_event: dict[str, Any]) -> None:
        self._pending.pop(key, None)
        self._pending[key] = {
            "type": "image", "action": "update", "owner": key[2], "name": key[3], "burst": True,
            "state": tag_event.get("image_state", tag_event["state"]), "at": tag_event["at"],
            "seq": tag_event["seq"],
        }
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_at is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_flush + self.window - loop.time()
        # call_soon even when due: the other notifications of the same read join this round
        self._flush_at = loop.call_later(wait, self._step) if wait > 0 else loop.call_soon(self._step)

    # ------------------------------------------------------------ fan-out

    def flush(self) -> None:
        """Write the pending changes to every subscriber allowed to see them, now and in one go
        (the scheduled rounds do the same SLICE subscribers per turn of the event loop)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        started, cpu = asyncio.get_running_loop().time(), time.thread_time()
        self._append_pending()
        self._round = ()
        self._write(tuple(self._everyone))
        self._round_cpu = time.thread_time() - cpu
        self._end_round(started)

    def _step(self) -> None:
        """One slice of a round: starts a round if none is under way, puts the changes heard
        since the previous slice on the log, and writes to the next SLICE subscribers."""
        self._flush_at = None
        loop = asyncio.get_running_loop()
        if not self._round:
            if not self._pending and self._logged <= self._floor():
                return
            self._round, self._round_at, self._round_started = tuple(self._everyone), 0, loop.time()
            self._round_cpu = 0.0
        cpu = time.thread_time()
        self._append_pending()
        end = self._round_at + SLICE
        self._write(self._round[self._round_at:end])
        self._round_at = end
        self._round_cpu += time.thread_time() - cpu
        if end < len(self._round):
            self._flush_at = loop.call_soon(self._step)
            return
        self._round = ()
        self._end_round(self._round_started)

    def _append_pending(self) -> None:
        """Encode the pending changes, once each, onto the log."""
        if self._pending:
            for e in self._pending.values():
                owner, seq, name = e.get("owner"), e["seq"], e["name"]
                self._log.append((seq, owner, name, orjson.dumps(serializers.event(e))))
                self._log_seqs.append(seq)
                if owner is None:
                    for account in self._shadows.accounts(name):
                        self._differs_at[account] = seq
                    continue
                self._differs_at[owner] = seq
                if e["type"] == "image":
                    self._shadows.follow(owner, e["action"], name)
            self._pending.clear()
            self._tag_counts.clear()
            self._batches.clear()
        self._logged = self._received

    def _write(self, subscribers: tuple[Subscriber, ...]) -> None:
        upto, differs_at, batches = self._logged, self._differs_at, self._batches
        limit, delivered = self.limit, 0
        for sub in subscribers:  # the hot loop: one socket write per subscriber
            sent = sub.sent
            if sent >= upto or sub.reason is not None:
                continue
            sub.sent = upto
            # an account with changes of its own gets them in commit order among the catalog's
            # (and not the catalog's changes of the names it shadows)
            key = (sent, sub.account_id if differs_at and differs_at.get(sub.account_id, 0) > sent else None)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = self._batch(*key)
            wire, n = batch
            if n == 0:
                continue
            t = sub.transport
            if t.is_closing():
                sub.close("client closed")
            elif t.get_write_buffer_size() > limit:
                self.dropped += 1
                sub.close("lagging: the client did not keep up with the stream")
            else:
                t.write(wire[sub.kind])
                delivered += n
        self.delivered += delivered

    def _batch(self, after: int, account: int | None) -> tuple[tuple[bytes, bytes, bytes], int]:
        """The wire bytes of the logged changes past `after` that `account` may see (None: the
        catalog's only), and how many they are."""
        shadowed = self._shadows.names(account) if account is not None else ()
        bodies = [body for _, owner, name, body in self._log[bisect.bisect_right(self._log_seqs, after):]
                  if owner == account or (owner is None and name not in shadowed)]
        return Batch.of(bodies).wire, len(bodies)

    def _floor(self) -> int:
        """The last change every open subscriber has had."""
        return min((s.sent for s in self._everyone if s.reason is None), default=self._logged)

    def _end_round(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        floor = self._floor()
        cut = bisect.bisect_right(self._log_seqs, floor)
        if cut:
            del self._log[:cut], self._log_seqs[:cut]
            self._differs_at = {a: seq for a, seq in self._differs_at.items() if seq > floor}
            self._batches.clear()
        # The next round waits for the window, or as long as this one took when that is longer,
        # or longer still when its CPU time passes EVENTS_FANOUT_SHARE of the time since it
        # started: with many clients the batches grow instead of the rounds queueing up behind
        # each other or taking the CPU from the processes beside them (the API, Postgres).
        took = max(loop.time() - started, self._round_cpu / self.fanout_share if self.fanout_share > 0 else 0.0)
        self._last_flush = started + max(0.0, took - self.window)
        # changes heard mid-round are still owed to the subscribers the round had passed
        if self._pending or self._logged > floor:
            self._schedule()

    # ------------------------------------------------------------ subscribers

    def check_room(self, account_id: int) -> None:
        """Raises TooManyStreamsError when the account has EVENTS_MAX_PER_ACCOUNT streams here."""
        if len(self._by_account.get(account_id, ())) >= self.max_per_account:
            raise TooManyStreamsError(
                f"this account has {self.max_per_account} event streams open already; close one first")

    def subscribe(self, account_id: int, transport: asyncio.Transport, kind: int,
                  shadowed: Iterable[str] = ()) -> Subscriber:
        """Raises TooManyStreamsError past EVENTS_MAX_PER_ACCOUNT for the account. `shadowed`:
        the names of the account's own images that the catalog has too (queries.shadowed_names)."""
        self.check_room(account_id)
        sub = Subscriber(account_id, transport, kind, self._received)
        self._everyone.add(sub)
        self._by_account.setdefault(account_id, set()).add(sub)
        self._shadows.add(account_id, shadowed)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._everyone.discard(sub)
        mine = self._by_account.get(sub.account_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._by_account[sub.account_id]
                self._shadows.drop(sub.account_id)

    def close_all(self, reason: str) -> None:
        for sub in tuple(self._everyone):
            sub.close(reason)

    # ------------------------------------------------------------ Docker Hub lookups

    def _on_inspect(self, _conn: object, _pid: int, _channel: str, name: str) -> None:
        for fut in self._inspect_waiters.pop(name, ()):
            if not fut.done():
                fut.set_result(None)

    @contextlib.contextmanager
    def inspection(self, name: str) -> Iterator[asyncio.Future[None]]:
        """A future resolved when the worker reports on the Hub lookup of `name`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inspect_waiters.setdefault(name, set()).add(fut)
        try:
            yield fut
        finally:
            waiting = self._inspect_waiters.get(name)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._inspect_waiters[name]


EVENT_HUB = web.AppKey("event_hub", EventHub)
