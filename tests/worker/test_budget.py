"""The fleet-wide registry budget (worker/registry/budget.py) with the real Redis: two Budget
objects stand for two worker processes; and the per-process fair share between hosts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import structlog

from core.crypto import Credentials
from core.settings import ConfigError
from tests.conftest import unique
from tests.support.services import free_port
from worker.registry.budget import RATELIMIT_FLOOR, Budget, credential_key
from worker.registry.errors import HostBusyError
from worker.registry.limits import HostLimits, LimitTable, parse_limits
from worker.shares import HostShares

MakeBudget = Callable[..., Budget]


@pytest.fixture
async def make_budget(redis_url: str) -> AsyncIterator[MakeBudget]:
    made: list[Budget] = []

    def make(limits: dict[str, HostLimits], *, wait_max: float = 2.0, url: str | None = redis_url) -> Budget:
        b = Budget(LimitTable(limits, HostLimits()), url, wait_max=wait_max, hold_seconds=5.0)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.aclose()


def host() -> str:
    """A host no earlier run used either: the budgets' keys outlive a test session in Redis."""
    return f"{unique('budget')}-{uuid.uuid4().hex[:8]}.test:5000"


def test_limits_override_the_defaults_field_by_field() -> None:
    table = parse_limits('{"*": {"rate": 5}, "Ghcr.io": {"concurrency": 3}, "registry-1.docker.io": {"pulls": 5000}}')
    assert table.for_host("example.com") == HostLimits(concurrency=64, rate=5.0, burst=20)
    assert table.for_host("ghcr.io") == HostLimits(concurrency=3, rate=5.0, burst=20)
    hub = table.for_host("registry-1.docker.io")
    assert (hub.pulls, hub.pull_window, hub.concurrency) == (5000, 21600.0, 8)
    # Docker Hub's published limits by default: 100 pulls / 6 h anonymously, 200 with an account
    assert parse_limits("").for_host("registry-1.docker.io").pulls == 100
    assert parse_limits("").for_host("index.docker.io", authenticated=True).pulls == 200
    assert not parse_limits('{"reg.internal": null}').for_host("reg.internal").shared


@pytest.mark.parametrize("raw", ["[1]", "{not json", '{"h": {"speed": 1}}', '{"h": {"rate": -1}}', '{"h": 3}'])
def test_a_malformed_registry_limits_names_itself(raw: str) -> None:
    with pytest.raises(ConfigError, match="REGISTRY_LIMITS"):
        parse_limits(raw)


async def test_concurrency_is_shared_by_every_process(make_budget: MakeBudget) -> None:
    h = host()
    a, b = make_budget({h: HostLimits(concurrency=2)}, wait_max=0.3), make_budget({h: HostLimits(concurrency=2)})
    p1 = await a.acquire(h)
    p2 = await b.acquire(h)
    with pytest.raises(HostBusyError) as busy:  # a third request in either process waits, then gives up
        await a.acquire(h)
    assert busy.value.give_up and busy.value.retry_after >= 1.0
    await p1.release()
    p3 = await a.acquire(h)  # the slot another process freed
    for p in (p2, p3):
        await p.release()


async def test_rate_spaces_the_fleets_requests(make_budget: MakeBudget) -> None:
    h = host()
    limits = {h: HostLimits(rate=20.0, burst=1)}
    budgets = [make_budget(limits), make_budget(limits)]
    sent: list[float] = []

    async def request(b: Budget) -> None:
        permit = await b.acquire(h)
        sent.append(time.monotonic())
        await permit.release()

    started = time.monotonic()
    await asyncio.gather(*(request(budgets[i % 2]) for i in range(20)))
    # 20 requests at 20/s from two processes: about a second, spread out (a late wake-up may
    # bring two closer, never more than the rate into any half second)
    assert time.monotonic() - started >= 0.9
    sent.sort()
    assert max(sum(1 for t in sent if s <= t < s + 0.5) for s in sent) <= 12


async def test_a_pause_stops_every_process_and_a_long_one_hands_back(make_budget: MakeBudget) -> None:
    h = host()
    limits = {h: HostLimits(concurrency=10)}
    a, b = make_budget(limits, wait_max=0.5), make_budget(limits, wait_max=0.5)
    assert await a.pause(h, 5.0, "429") == pytest.approx(5.0, abs=0.1)
    assert await a.pause(h, 1.0, "429") > 4  # never shortened
    with pytest.raises(HostBusyError) as busy:
        await b.acquire(h)
    assert 4 < busy.value.retry_after <= 5
    assert await b.paused_for(h) > 4
    short = host()
    await a.pause(short, 0.3, "429")
    started = time.monotonic()
    await (await b.acquire(short)).release()  # a short pause is slept through
    assert time.monotonic() - started >= 0.25


async def test_hosts_without_fleet_limits_still_see_pauses(make_budget: MakeBudget) -> None:
    h = host()
    a, b = make_budget({h: HostLimits()}, wait_max=0.2), make_budget({h: HostLimits()}, wait_max=0.2)
    await (await b.acquire(h)).release()
    await a.pause(h, 3.0, "429")
    await asyncio.sleep(0.25)  # B's view of the pause is at most PAUSE_CHECK_EVERY old
    with pytest.raises(HostBusyError):
        await b.acquire(h)


async def test_pulls_follow_docker_hubs_ratelimit_remaining(make_budget: MakeBudget) -> None:
    h = host()
    limits = {h: HostLimits(pulls=100, pull_window=21600)}
    a, b = make_budget(limits), make_budget(limits)
    await (await a.acquire(h, pull=True)).release()
    # the hub says 12 are left: with the floor kept in reserve, two more manifest GETs
    await a.note_ratelimit(h, "100;w=21600", f"{RATELIMIT_FLOOR + 2};w=21600")
    for _ in range(2):
        await (await b.acquire(h, pull=True)).release()
    with pytest.raises(HostBusyError) as busy:
        await b.acquire(h, pull=True)
    assert busy.value.retry_after > 100  # one pull comes back every 216 s
    await (await b.acquire(h, pull=False)).release()  # HEADs (and blobs) are not pulls


async def test_each_credential_has_its_own_fleet_bucket(make_budget: MakeBudget) -> None:
    """Two processes (Budget objects) on the real Redis: pauses and pull counts per
    credential key, shared by the fleet; anonymous requests have the host's bucket."""
    h = host()
    limits = {h: HostLimits(concurrency=10, pulls=100, credential_pulls=200)}
    a, b = make_budget(limits, wait_max=0.2), make_budget(limits, wait_max=0.2)
    one, two = credential_key(Credentials("one", "x")), credential_key(Credentials("two", "x"))
    assert one == credential_key(Credentials("one", "another secret"))  # the user name, never the secret
    await a.pause(h, 5.0, "429", one)
    with pytest.raises(HostBusyError, match="these credentials"):
        await b.acquire(h, credential=one)
    await (await b.acquire(h, credential=two)).release()
    await (await b.acquire(h)).release()
    assert await b.paused_for(h, one) > 4 and await b.paused_for(h, two) == 0 and await b.paused_for(h) == 0

    await a.note_ratelimit(h, "200;w=21600", f"{RATELIMIT_FLOOR + 1};w=21600", two)
    await (await b.acquire(h, pull=True, credential=two)).release()
    with pytest.raises(HostBusyError, match="pulls"):
        await b.acquire(h, pull=True, credential=two)
    await (await b.acquire(h, pull=True)).release()  # the anonymous bucket is untouched
    await a.pause(h, 5.0, "429")  # an anonymous 429 pauses the anonymous requests
    with pytest.raises(HostBusyError):
        await b.acquire(h)
    await (await b.acquire(h, credential=two)).release()


async def test_without_redis_each_process_keeps_the_limits_and_says_so_once(make_budget: MakeBudget) -> None:
    h = host()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    budget = make_budget({h: HostLimits(concurrency=1)}, wait_max=0.2, url=dead)
    with structlog.testing.capture_logs() as logs:
        permit = await budget.acquire(h)
        with pytest.raises(HostBusyError):
            await budget.acquire(h)
        await permit.release()
        await (await budget.acquire(h)).release()
    assert [e["event"] for e in logs].count("budget.redis_unavailable") == 1


async def test_a_host_over_its_share_waits_briefly_then_hands_back() -> None:
    failures: dict[str, float] = {}

    async def not_paused(*_: object) -> float:
        return 0.0

    shares = HostShares(8, share=0.25, per_host_max=16, slow_share=0.25, last_failure=failures,
                        paused_for=not_paused, wait_max=0.3)
    assert HostShares(100, share=0.25, per_host_max=16, slow_share=0.25, last_failure=failures,
                      paused_for=not_paused, wait_max=0.3).limit == 16  # what its requests can serve
    hold = asyncio.Event()

    async def sync(host: str) -> str:
        try:
            async with shares.slot(host):
                await hold.wait()
                return "synced"
        except HostBusyError:
            return "deferred"

    held = [asyncio.create_task(sync("big.test")) for _ in range(2)]  # its share: 2 of 8
    await asyncio.sleep(0.05)
    assert await sync("big.test") == "deferred"  # waited 0.3 s for a slot, then handed back
    other = asyncio.create_task(sync("small.test"))  # another host is not held up
    await asyncio.sleep(0.05)
    assert shares.busy == {"big.test": 2, "small.test": 1}
    waiting = asyncio.create_task(sync("big.test"))
    await asyncio.sleep(0.05)
    hold.set()  # the held syncs end: the waiting one gets a slot
    assert await asyncio.gather(*held, other, waiting) == ["synced"] * 4
    # a host that timed out lately does not wait at all
    failures["hang.test"] = time.monotonic()
    hold.clear()
    hung = [asyncio.create_task(sync("hang.test")) for _ in range(2)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await sync("hang.test") == "deferred" and time.monotonic() - started < 0.1
    hold.set()
    await asyncio.gather(*hung)


async def test_an_account_over_its_share_is_handed_back_at_once() -> None:
    """Accounts first, hosts second: an account spread over many hosts holds at most its
    share of the process (the catalog is an account of its own); a sync over it does not
    wait; the account's slow hosts hold at most SLOW_HOST_SHARE of its share."""
    failures: dict[str, float] = {}

    async def not_paused(*_: object) -> float:
        return 0.0

    shares = HostShares(8, share=0.5, per_host_max=16, slow_share=0.5, account_share=0.25, last_failure=failures,
                        paused_for=not_paused, wait_max=1.0)
    assert (shares.account_limit, shares.account_slow_limit) == (2, 1)
    hold = asyncio.Event()

    async def sync(account: int | None, host: str) -> str:
        try:
            async with shares.slot(host, account):
                await hold.wait()
                return "synced"
        except HostBusyError as exc:
            assert exc.retry_after >= 1.0
            return "deferred"

    held = [asyncio.create_task(sync(7, f"h{i}.test")) for i in range(2)]  # two hosts, one account
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await sync(7, "h3.test") == "deferred" and time.monotonic() - started < 0.1  # no wait
    others = [asyncio.create_task(sync(8, "h3.test")), asyncio.create_task(sync(None, "h0.test"))]
    await asyncio.sleep(0.05)
    assert {k: len(v) for k, v in shares.accounts.items()} == {7: 2, 8: 1, None: 1}
    hold.set()
    assert await asyncio.gather(*held, *others) == ["synced"] * 4
    assert shares.accounts == {}
    # of its share, an account's slow hosts hold one slot here
    hold.clear()
    failures.update({"slow1.test": time.monotonic(), "slow2.test": time.monotonic()})
    slow = asyncio.create_task(sync(7, "slow1.test"))
    await asyncio.sleep(0.05)
    assert await sync(7, "slow2.test") == "deferred"
    healthy = asyncio.create_task(sync(7, "h1.test"))
    await asyncio.sleep(0.05)
    hold.set()
    assert await asyncio.gather(slow, healthy) == ["synced"] * 2
