"""A bounded cache of slow answers, with calls for the same key shared.

The network sources (a legacy application's who-am-I page, Kaltura's
category lists, widget sessions) are asked about the same few keys again
and again: one viewer sends an event every few seconds, one course has
hundreds of viewers. :class:`AnswerCache` keeps each answer for a while:

- a found answer for ``ttl`` seconds, a "nothing" (None) or a failure for
  ``negative_ttl``, so a broken service is not asked on every event;
- at most ``max_entries``, the least recently used going first;
- while one call for a key is under way, every other caller for that key
  waits for the same call instead of starting another (coalescing).

A caller never waits longer than its own ``timeout``; the call itself
goes on in the background and fills the cache for the callers after it.
Every call runs as a task the cache owns and cancels at :meth:`close`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from enum import StrEnum
from typing import Generic, TypeVar

Value = TypeVar("Value")


class Outcome(StrEnum):
    """How one :meth:`AnswerCache.get` was answered, for metrics."""

    HIT = "hit"  # a kept answer (found or not)
    SHARED = "shared"  # waited for another caller's call
    CALLED = "called"  # made the call
    FAILED = "failed"  # the call raised, now or when it was kept
    TIMEOUT = "timeout"  # gave up waiting after ``timeout``


class AnswerCache(Generic[Value]):
    """Answers by key; see the module's description."""

    def __init__(
        self,
        *,
        name: str,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        # key -> (kept until, answer or None, whether it was a failure)
        self._kept: OrderedDict[Hashable, tuple[float, Value | None, bool]] = (
            OrderedDict()
        )
        self._calls: dict[Hashable, asyncio.Task[Value | None]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    async def get(
        self,
        key: Hashable,
        call: Callable[[], Awaitable[Value | None]],
        *,
        timeout: float,
    ) -> tuple[Value | None, Outcome]:
        """The answer for ``key``, calling ``call`` when none is kept.

        Returns the answer (None for "nothing") and how it was found. A
        failed call or a wait past ``timeout`` gives None; the caller
        decides what to count, and never sees the exception.
        """
        # a kept answer, still fresh
        kept = self._kept.get(key)
        if kept is not None:
            until, answer, failed = kept
            if until > self._clock():
                self._kept.move_to_end(key)
                return answer, Outcome.FAILED if failed else Outcome.HIT
            del self._kept[key]

        # a call under way for the same key, or a new one
        task = self._calls.get(key)
        outcome = Outcome.SHARED
        if task is None:
            task = self._start(key, call)
            outcome = Outcome.CALLED

        try:
            answer = await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return None, Outcome.TIMEOUT
        except asyncio.CancelledError:
            if task.cancelled() and not _current_task_cancelling():
                return None, Outcome.FAILED  # the cache was closed under us
            raise
        except Exception:
            return None, Outcome.FAILED
        return answer, outcome

    def _start(
        self, key: Hashable, call: Callable[[], Awaitable[Value | None]]
    ) -> asyncio.Task[Value | None]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(key, call), name=f"kstats-{self.name}")
        self._calls[key] = task
        return task

    async def _run(
        self, key: Hashable, call: Callable[[], Awaitable[Value | None]]
    ) -> Value | None:
        try:
            answer = await call()
        except Exception:
            self._keep(key, None, failed=True)
            raise
        finally:
            self._calls.pop(key, None)
        self._keep(key, answer, failed=False)
        return answer

    def _keep(self, key: Hashable, answer: Value | None, *, failed: bool) -> None:
        ttl = self._negative_ttl if answer is None or failed else self._ttl
        if ttl <= 0:
            return
        self._kept[key] = (self._clock() + ttl, answer, failed)
        self._kept.move_to_end(key)
        while len(self._kept) > self._max_entries:
            self._kept.popitem(last=False)

    async def close(self) -> None:
        """Cancel the calls under way and forget every answer."""
        tasks = list(self._calls.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._calls.clear()
        self._kept.clear()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
