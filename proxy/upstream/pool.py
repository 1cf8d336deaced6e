"""A lean keep-alive HTTP/1.1 connection pool for the event path.

Every statistics event the proxy accepts is forwarded to one configured
origin: a small GET or POST out, a small answer back. aiohttp's general
client spends about 300 us of CPU on each such exchange (request and
response objects, multidicts, stream readers, tracing hooks), which is
most of the proxy's budget per event. This module does the same job with
an asyncio Protocol per connection, httptools' C response parser and a
LIFO stack of idle connections, so that an exchange costs one
``transport.write``, one future and a handful of parser callbacks.

It deliberately does little: one origin, whole bodies in memory (bounded
by ``max_response_bytes``), no redirects, no cookies, no decompression.
Large pass-through traffic goes through aiohttp's client elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Sequence
from typing import Any, Final

from proxy.upstream.connection import Connection
from proxy.upstream.model import (
    Origin,
    PoolSettings,
    UpstreamError,
    UpstreamErrorReason,
    UpstreamResponse,
)
from proxy.upstream.request import encode_request

__all__ = [
    "Origin",
    "PoolSettings",
    "UpstreamError",
    "UpstreamErrorReason",
    "UpstreamPool",
    "UpstreamResponse",
]

logger = logging.getLogger("kstats.upstream")

# loop timers have millisecond resolution and may fire that much early
_CLOCK_SLACK: Final = 0.001


_DEFAULT_SETTINGS: Final = PoolSettings()


class _Deadline:
    """When one request's total_timeout runs out, and what it waits on."""

    __slots__ = ("expired", "future", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.future: asyncio.Future[Any] | None = None
        self.expired = False

    def expire(self, error: UpstreamError) -> None:
        # a future already done (an answer, a slot) is the request's to
        # take; the request checks ``expired`` before it waits again
        self.expired = True
        future = self.future
        if future is not None and not future.done():
            future.set_exception(error)


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one origin, and requests over them.

    ``request`` sends one request and returns the complete response, or
    raises UpstreamError (network or upstream trouble) or ValueError (a
    request that cannot be written safely: a method that is not a token, a
    target with spaces or control characters, a header name that is not a
    token, a header value with CR, LF or NUL). ValueError is raised before
    any connection is touched.

    The request is written as given: the method, the target and each
    header verbatim, in order. The pool writes the framing itself: it
    drops caller Content-Length, Transfer-Encoding and Connection headers
    (the last is hop-by-hop; the pool never asks the origin to close),
    adds Content-Length when there is a body or the method is POST, PUT or
    PATCH, and adds Host only when the caller gave none.

    Idle connections are reused newest first. A request that fails on a
    reused connection with EOF or reset before any response byte is sent
    again, once, on a fresh connection; nothing else is retried.

    ``close`` closes every connection; requests in flight and later ones
    fail with reason "connect". Idle connections past ``idle_timeout`` are
    closed by a timer, no task involved.

    A pool belongs to the event loop of its first request, as its
    connections do.
    """

    __slots__ = (
        "_busy",
        "_closed",
        "_connect_timeout",
        "_conns",
        "_deadline_timer",
        "_deadlines",
        "_host_line",
        "_idle",
        "_idle_timeout",
        "_loop",
        "_max_connections",
        "_max_idle",
        "_origin",
        "_server_hostname",
        "_slot_waiters",
        "_ssl",
        "_sweeper",
        "_timeout_cause",
        "_total_timeout",
        "label",
        "max_body",
    )

    def __init__(
        self,
        origin: Origin,
        settings: PoolSettings = _DEFAULT_SETTINGS,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = origin
        self.label = f"{origin.scheme}://{origin.host_header}"
        self._host_line = f"Host: {origin.host_header}\r\n"
        self._max_idle = settings.max_idle
        self._idle_timeout = settings.idle_timeout
        self._connect_timeout = settings.connect_timeout
        self._total_timeout = settings.total_timeout
        self._timeout_cause = (
            f"no complete response within {settings.total_timeout:g} s"
        )
        self.max_body = settings.max_response_bytes
        self._ssl: ssl.SSLContext | None = None
        self._server_hostname: str | None = None
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._server_hostname = origin.host
        # the loop of the first request; the pool's connections live on it
        self._loop: asyncio.AbstractEventLoop | None = None
        # the concurrency cap: slots in use, and callers waiting for one
        self._max_connections = settings.max_connections
        self._busy = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = (
            collections.deque()
        )
        # requests in flight in start order, and one timer for the oldest
        self._deadlines: dict[_Deadline, None] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._idle: collections.deque[Connection] = collections.deque()
        self._conns: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._conns)

    @property
    def idle_connections(self) -> int:
        """Open connections waiting for a request."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = b"",
    ) -> UpstreamResponse:
        """Send one request and return the complete response."""
        data = encode_request(method, target, headers, body, self._host_line)
        if self._closed:
            raise self._error("connect", "pool closed")
        deadline = self._start_deadline()
        try:
            # a slot under the cap, or a place in line for one
            if self._busy < self._max_connections and not self._slot_waiters:
                self._busy += 1
            else:
                await self._wait_for_slot(deadline)
            try:
                return await self._exchange(data, method == "HEAD", deadline)
            finally:
                self._release_slot()
        finally:
            self._deadlines.pop(deadline, None)

    async def close(self) -> None:
        """Close every connection; later requests fail with "connect"."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        conns = list(self._conns)
        for conn in conns:
            conn.idle = False
            conn._fail("connect", "pool closed")
        if conns:
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)
        if self._deadline_timer is not None and not self._deadlines:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _error(self, reason: UpstreamErrorReason, cause: str) -> UpstreamError:
        return UpstreamError(reason, f"upstream {self.label}: {cause}")

    # total_timeout: every request in flight has a deadline in the
    # registry, which keeps start order; as total_timeout is the same for
    # all, the oldest deadline is always the first, and one timer set for
    # it serves them all

    def _start_deadline(self) -> _Deadline:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = _Deadline(loop.time() + self._total_timeout)
        self._deadlines[deadline] = None
        # an armed timer is due at or before this deadline: it will do
        if self._deadline_timer is None:
            self._arm_deadline_timer(loop, deadline.when)
        return deadline

    def _arm_deadline_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._deadline_timer = loop.call_at(when, self._expire_deadlines, loop)

    def _expire_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        self._deadline_timer = None
        deadlines = self._deadlines

        # the timer may fire up to a clock tick early
        now = loop.time() + _CLOCK_SLACK
        expired: list[_Deadline] = []
        for deadline in deadlines:
            if deadline.when > now:
                break
            expired.append(deadline)
        for deadline in expired:
            del deadlines[deadline]
            deadline.expire(self._error("timeout", self._timeout_cause))

        # the timer stays armed while any request is in flight, even
        # after close(), so that every request still ends in time
        if deadlines:
            self._arm_deadline_timer(loop, next(iter(deadlines)).when)

    # the concurrency cap: a released slot goes straight to the longest
    # waiter, so that a newcomer never overtakes the line

    async def _wait_for_slot(self, deadline: _Deadline) -> None:
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        deadline.future = waiter
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and not waiter.exception():
                # handed a slot just as the caller was cancelled: pass it on
                self._release_slot()
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            raise

        # handed a slot, but the deadline passed before this request ran
        if deadline.expired:
            self._release_slot()
            raise self._error("timeout", self._timeout_cause)

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._busy -= 1

    # one exchange

    async def _exchange(
        self, data: bytes, is_head: bool, deadline: _Deadline
    ) -> UpstreamResponse:
        if self._closed:
            raise self._error("connect", "pool closed")
        conn = self._checkout()
        if conn is None:
            conn = await self._connect(deadline)
            return await self._round_trip(conn, data, is_head, deadline)

        # XXX: the usual case, a round trip on a reused connection, is
        # _round_trip written out, which saves a coroutine per request
        response = conn.send(data, is_head)
        deadline.future = response
        try:
            answer = await response
        except UpstreamError as exc:
            conn.drop()
            if exc.reason != "reset" or conn.started:
                raise
        except BaseException:
            conn.drop()
            raise
        else:
            self._release(conn)
            return answer

        # the origin closed the idle connection as we reused it
        logger.debug("stale connection to %s, retrying once", self.label)
        conn = await self._connect(deadline)
        return await self._round_trip(conn, data, is_head, deadline)

    async def _round_trip(
        self, conn: Connection, data: bytes, is_head: bool, deadline: _Deadline
    ) -> UpstreamResponse:
        response = conn.send(data, is_head)
        deadline.future = response
        try:
            answer = await response
        except BaseException:
            conn.drop()
            raise
        self._release(conn)
        return answer

    async def _connect(self, deadline: _Deadline) -> Connection:
        if self._closed:
            raise self._error("connect", "pool closed")
        if deadline.expired:
            raise self._error("timeout", self._timeout_cause)
        loop = self._loop
        assert loop is not None
        origin = self._origin

        # the connect ends by connect_timeout or by the request's deadline
        connect_by = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(min(connect_by, deadline.when)):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            if deadline.when < connect_by:
                raise self._error("timeout", self._timeout_cause) from None
            cause = f"connect not done within {self._connect_timeout:g} s"
            raise self._error("timeout", cause) from None
        except OSError as exc:
            raise self._error("connect", f"cannot connect: {exc}") from exc

        # close() may have run while the connection was being opened
        if self._closed:
            conn.drop()
            raise self._error("connect", "pool closed")

        # an origin that hung up at once leaves a dead connection, which
        # fails its exchange with "reset" and must not be counted as open
        if not conn.lost.done():
            self._conns.add(conn)
        logger.debug("connection %d open to %s", len(self._conns), self.label)

        # the deadline passed as the connect completed: keep it for later
        if deadline.expired:
            self._release(conn)
            raise self._error("timeout", self._timeout_cause)
        return conn

    # idle stack

    def _checkout(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = idle[-1]._loop.time()
        while idle:
            conn = idle.pop()
            conn.idle = False

            # the top is the newest: if it is too old, so is everything below
            if now - conn.idle_since > self._idle_timeout:
                conn.drop()
                while idle:
                    old = idle.pop()
                    old.idle = False
                    old.drop()
                return None
            if conn.reusable:
                return conn
            conn.drop()
        return None

    def _release(self, conn: Connection) -> None:
        idle = self._idle
        if self._closed or not conn.reusable or len(idle) >= self._max_idle:
            conn.drop()
            return
        conn.idle = True
        conn.idle_since = conn._loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._schedule_sweep(conn._loop)

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self._idle[0].idle_since + self._idle_timeout
        self._sweeper = loop.call_at(when, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        idle = self._idle
        deadline = loop.time() - self._idle_timeout
        while idle and idle[0].idle_since <= deadline:
            conn = idle.popleft()
            conn.idle = False
            conn.drop()
        if idle:
            self._schedule_sweep(loop)

    def forget(self, conn: Connection) -> None:
        """Drop ``conn``, closed for good, from the open and idle sets."""
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
