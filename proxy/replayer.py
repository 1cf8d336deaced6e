"""Sending spooled requests again, oldest first, until Kaltura takes them.

One task per proxy: while the spool holds a request, it sends the oldest
on the event pool. Kaltura *accepts* a request when it answers with a
status under 500 other than 429 (an API error such as INVALID_KS comes
with 200 and would come again: sending it again cannot help). Then the
request is acknowledged in the spool and the next one goes. Otherwise
the replayer waits, 0.5 s at first, twice as long after each failure up
to 30 s, each wait drawn between half and all of that (jitter, so that
many proxies recovering together do not all knock at once), and tries
the same request again.

While it waits after a failure, :attr:`Replayer.backlogged` is true:
new events then go straight to the spool instead of waiting for a
Kaltura that is known to be down, so the player is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Final

from proxy.spool import Spool, SpooledRequest
from proxy.upstream.pool import UpstreamError, UpstreamPool

logger = logging.getLogger("kstats.spool")

FIRST_WAIT: Final = 0.5
LONGEST_WAIT: Final = 30.0


def accepted(status: int) -> bool:
    """Whether an upstream answer means Kaltura took the request."""
    return status < 500 and status != 429


class Replayer:
    """The task that drains the spool; see the module's text."""

    def __init__(
        self,
        spool: Spool,
        pool: UpstreamPool,
        *,
        first_wait: float = FIRST_WAIT,
        longest_wait: float = LONGEST_WAIT,
    ) -> None:
        self.spool = spool
        self._pool = pool
        self._first_wait = first_wait
        self._longest_wait = longest_wait
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._retry_now = asyncio.Event()

    @property
    def backlogged(self) -> bool:
        """Whether the last replay failed and requests wait in the spool."""
        return self._failures > 0 and len(self.spool) > 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="kstats-spool-replayer")

    async def stop(self) -> None:
        """Stop replaying; what is left stays on disk for the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def upstream_answered(self) -> None:
        """A live request just got an answer: a waiting replay may go now."""
        if self._failures:
            self._retry_now.set()

    async def _run(self) -> None:
        while True:
            request = self.spool.oldest()
            if request is None:
                self.spool.changed.clear()
                await self.spool.changed.wait()
                continue
            try:
                sent = await self._send(request)
                if sent:
                    self._failures = 0
                    await self.spool.accept(request)
            except Exception:
                # a full disk, say: the replayer must outlive it
                logger.exception("replaying the spool failed; trying again")
                sent = False
            if not sent:
                # TODO: a request Kaltura always answers with 5xx stays
                # oldest for ever and keeps live events spooling behind it;
                # capping its attempts or age, and letting some live traffic
                # probe Kaltura while backlogged, would get past it
                self._failures += 1
                await self._wait()

    async def _send(self, request: SpooledRequest) -> bool:
        try:
            answer = await self._pool.request(
                request.method, request.target, request.headers, request.body
            )
        except UpstreamError as error:
            if self._failures == 0:
                logger.warning(
                    "replay of spooled request %d failed: %s", request.id, error
                )
            return False
        except ValueError as error:
            # the pool will never write it: keeping it would stop the spool
            logger.error(
                "spooled request %d cannot be sent, dropped: %s", request.id, error
            )
            return True
        if not accepted(answer.status):
            if self._failures == 0:
                logger.warning(
                    "replay of spooled request %d: Kaltura answered %d",
                    request.id,
                    answer.status,
                )
            return False
        return True

    async def _wait(self) -> None:
        ceiling = min(self._longest_wait, self._first_wait * 2 ** (self._failures - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        self._retry_now.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), delay)
