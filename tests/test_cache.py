"""The answer cache: kept answers, expiry, bounds, shared calls, time limits."""

from __future__ import annotations

import asyncio

from proxy.cache import AnswerCache, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Service:
    """A call that counts how often it ran, answering after ``delay``."""

    def __init__(self, answer: str | None = "alice", delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.calls = 0
        self.fail = False

    async def __call__(self) -> str | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("connection refused")
        return self.answer


def _cache(clock: Clock, **changes: float) -> AnswerCache[str]:
    settings = {"ttl": 60.0, "negative_ttl": 5.0, "max_entries": 100, **changes}
    return AnswerCache(
        name="test",
        ttl=settings["ttl"],
        negative_ttl=settings["negative_ttl"],
        max_entries=int(settings["max_entries"]),
        clock=clock,
    )


async def test_a_kept_answer_is_returned_without_a_call_until_its_ttl() -> None:
    clock, service = Clock(), Service()
    cache = _cache(clock)

    assert ("alice", Outcome.CALLED) == await cache.get("k", service, timeout=1)
    clock.now += 59
    assert ("alice", Outcome.HIT) == await cache.get("k", service, timeout=1)
    assert 1 == service.calls

    clock.now += 2
    assert ("alice", Outcome.CALLED) == await cache.get("k", service, timeout=1)
    assert 2 == service.calls


async def test_nothing_found_is_kept_for_the_negative_ttl_only() -> None:
    clock, service = Clock(), Service(answer=None)
    cache = _cache(clock)

    assert (None, Outcome.CALLED) == await cache.get("k", service, timeout=1)
    assert (None, Outcome.HIT) == await cache.get("k", service, timeout=1)
    clock.now += 6
    await cache.get("k", service, timeout=1)
    assert 2 == service.calls


async def test_a_failure_gives_nothing_and_is_not_retried_for_a_while() -> None:
    clock, service = Clock(), Service()
    service.fail = True
    cache = _cache(clock)

    assert (None, Outcome.FAILED) == await cache.get("k", service, timeout=1)
    assert (None, Outcome.FAILED) == await cache.get("k", service, timeout=1)
    assert 1 == service.calls

    service.fail = False
    clock.now += 6
    assert ("alice", Outcome.CALLED) == await cache.get("k", service, timeout=1)


async def test_concurrent_callers_for_one_key_share_one_call() -> None:
    service = Service(delay=0.05)
    cache = _cache(Clock())

    results = await asyncio.gather(
        *(cache.get("k", service, timeout=1) for _ in range(20))
    )

    assert 1 == service.calls
    assert {"alice"} == {answer for answer, _ in results}
    outcomes = [outcome for _, outcome in results]
    assert 1 == outcomes.count(Outcome.CALLED)
    assert 19 == outcomes.count(Outcome.SHARED)


async def test_a_slow_call_costs_a_caller_its_timeout_and_fills_the_cache_later() -> (
    None
):
    service = Service(delay=0.2)
    cache = _cache(Clock())
    loop = asyncio.get_running_loop()

    started = loop.time()
    assert (None, Outcome.TIMEOUT) == await cache.get("k", service, timeout=0.02)
    assert loop.time() - started < 0.15

    await asyncio.sleep(0.3)
    assert ("alice", Outcome.HIT) == await cache.get("k", service, timeout=0.02)
    assert 1 == service.calls


async def test_the_least_recently_used_answer_goes_first_past_the_bound() -> None:
    service = Service()
    cache = _cache(Clock(), max_entries=2)

    await cache.get("a", service, timeout=1)
    await cache.get("b", service, timeout=1)
    await cache.get("a", service, timeout=1)  # a is now the newest
    await cache.get("c", service, timeout=1)

    assert 2 == len(cache)
    assert Outcome.HIT == (await cache.get("a", service, timeout=1))[1]
    assert Outcome.CALLED == (await cache.get("b", service, timeout=1))[1]


async def test_close_cancels_calls_under_way_and_their_callers_get_nothing() -> None:
    service = Service(delay=10)
    cache = _cache(Clock())

    waiting = asyncio.ensure_future(cache.get("k", service, timeout=20))
    await asyncio.sleep(0.01)
    await cache.close()

    assert (None, Outcome.FAILED) == await asyncio.wait_for(waiting, 1)
    assert 0 == len(cache)


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    service = Service(delay=0.05)
    cache = _cache(Clock())

    first = asyncio.ensure_future(cache.get("k", service, timeout=1))
    second = asyncio.ensure_future(cache.get("k", service, timeout=1))
    await asyncio.sleep(0.01)
    first.cancel()

    assert ("alice", Outcome.SHARED) == await second
    assert 1 == service.calls
