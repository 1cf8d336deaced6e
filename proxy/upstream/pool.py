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
import ipaddress
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Origin",
    "PoolSettings",
    "UpstreamError",
    "UpstreamErrorReason",
    "UpstreamPool",
    "UpstreamResponse",
]

logger = logging.getLogger("kstats.upstream")

UpstreamErrorReason = Literal[
    "connect",
    "timeout",
    "reset",
    "protocol",
    "too_large",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.-]+")

# request validation; the header-name verdicts are cached because the same
# few dozen names arrive on every event
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# every byte to itself, but each control byte, space and DEL to another
_TARGET_CHECK: Final = bytes(
    (0 if byte == 1 else 1) if byte <= 0x20 or byte == 0x7F else byte
    for byte in range(256)
)
_HTTP11: Final = b" HTTP/1.1\r\n"
_CRLF: Final = b"\r\n"
_KNOWN_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
)
_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))
# what the pool does with a caller's header: write it, drop it (the pool
# writes its own framing) or write it as the Host
_KEEP, _DROP, _HOST = 0, 1, 2
_POOL_WRITTEN: Final = frozenset(
    ("content-length", "transfer-encoding", "connection"),
)
_NAME_KINDS: dict[str, int] = {}
_NAME_KINDS_MAX: Final = 1024

_SETTING_MINIMUMS: Final = (
    ("max_connections", 1),
    ("max_idle", 0),
    ("max_response_bytes", 0),
)

# a response head (status line and headers) larger than this is refused
_MAX_HEAD_BYTES: Final = 64 * 1024
_HEAD_TOO_LARGE: Final = f"response head over {_MAX_HEAD_BYTES} bytes"
# a header line is at least 4 bytes and counts at most one more than it
# takes on the wire, so a head of fewer bytes than this is within the limit
_HEAD_SUM_FROM: Final = _MAX_HEAD_BYTES * 4 // 5

# loop timers have millisecond resolution and may fire that much early
_CLOCK_SLACK: Final = 0.001


class _ResponseParser(Protocol):
    """The part of ``httptools.HttpResponseParser`` this module uses."""

    def feed_data(self, data: bytes) -> None: ...
    def get_status_code(self) -> int: ...
    def get_http_version(self) -> str: ...
    def should_keep_alive(self) -> bool: ...


_PARSER_ERRORS: Final[tuple[type[Exception], ...]] = (
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where events go: a scheme, a host and a port, nothing else.

    ``host`` is a DNS name or an IP address (IPv6 without brackets); the
    constructor refuses anything else, so ``host_header`` is always safe
    to write on the wire.
    """

    scheme: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"origin scheme is not http(s): {self.scheme!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"origin port out of range: {self.port!r}")
        if ":" in self.host:
            try:
                ipaddress.IPv6Address(self.host)
            except ValueError:
                raise ValueError(f"invalid origin host: {self.host!r}") from None
        elif not _HOSTNAME.fullmatch(self.host):
            raise ValueError(f"invalid origin host: {self.host!r}")

    @classmethod
    def from_url(cls, url: str) -> Origin:
        """Parse ``http(s)://host[:port][/]``; anything else: ValueError."""
        problem = f"upstream origin {url!r} is not http(s)://host[:port][/]"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(problem) from None
        host = parts.hostname
        if (
            parts.scheme not in _DEFAULT_PORTS
            or not host
            or "@" in parts.netloc
            or parts.netloc.endswith(":")
            or parts.path not in ("", "/")
            or "?" in url
            or "#" in url
        ):
            raise ValueError(problem)
        if port is None:
            port = _DEFAULT_PORTS[parts.scheme]
        try:
            return cls(parts.scheme, host, port)
        except ValueError:
            raise ValueError(problem) from None

    @property
    def host_header(self) -> str:
        """The Host header value, with the port only if not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Limits of one pool; times are in seconds.

    ``max_connections`` caps open connections, idle ones included; callers
    beyond it wait for a free slot, and the wait counts against
    ``total_timeout``, which bounds a whole request from that wait to the
    last body byte. ``max_response_bytes`` bounds the body; the response
    head is bounded separately at 64 KiB.
    """

    max_connections: int = 256
    max_idle: int = 64
    idle_timeout: float = 30.0
    connect_timeout: float = 3.0
    total_timeout: float = 10.0
    max_response_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name, least in _SETTING_MINIMUMS:
            value = getattr(self, name)
            if value < least:
                raise ValueError(f"{name} must be >= {least}: {value}")
        for name in ("idle_timeout", "connect_timeout", "total_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0: {value}")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A complete upstream answer.

    ``headers`` keep wire order and case, repeated ones included (every
    Set-Cookie). Names and values are decoded as UTF-8 with
    surrogateescape, the way aiohttp's server decodes request headers, so
    encoding them back the same way gives the bytes on the wire. ``body``
    is de-chunked but never decompressed.
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


_DEFAULT_SETTINGS: Final = PoolSettings()


class UpstreamError(Exception):
    """A request that got no usable answer from the origin.

    ``reason`` is one of a bounded set, fit for a metrics label:

    - ``connect``: the connection could not be opened (refused, DNS, TLS),
      or the pool is closed;
    - ``timeout``: connect_timeout or total_timeout ran out;
    - ``reset``: the connection was reset or closed before the answer
      was complete;
    - ``protocol``: the answer was not valid HTTP/1.x;
    - ``too_large``: the answer was over the pool's limits.

    The message names the origin and the cause.
    """

    reason: UpstreamErrorReason

    def __init__(self, reason: UpstreamErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing after a failure."""


class _Connection(asyncio.Protocol):
    """One upstream connection, carrying one exchange at a time.

    ``send`` writes a request and returns a future resolved with the
    response or failed with an UpstreamError; no failure escapes the
    protocol callbacks. Once the future is done, ``reusable`` says whether
    another exchange may follow, and ``started`` whether any response
    byte arrived.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_chunked",
        "_connection",
        "_declared",
        "_head_bytes",
        "_head_done",
        "_headers",
        "_is_head",
        "_loop",
        "_parser",
        "_pool",
        "_reason",
        "_renew_parser",
        "_status",
        "_transport",
        "_waiter",
        "idle",
        "idle_since",
        "lost",
        "reusable",
        "started",
    )

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: _ResponseParser = httptools.HttpResponseParser(self)
        self._renew_parser = False
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._is_head = False
        self._head_done = False
        self._head_bytes = 0
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._declared = -1
        self._chunked = False
        self._connection = b""
        self.reusable = True
        self.started = False
        self.idle = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()

    # exchange

    def send(self, data: bytes, is_head: bool) -> asyncio.Future[UpstreamResponse]:
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        self._waiter = waiter
        self._is_head = is_head
        self._head_done = False
        self._head_bytes = 0
        self.started = False

        # a HEAD answer left the parser waiting for a body that never comes
        if self._renew_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._renew_parser = False

        transport = self._transport
        if transport is None or transport.is_closing():
            self._fail("reset", "connection closed before the request")
        else:
            transport.write(data)
        return waiter

    def drop(self) -> None:
        """Close the connection for good, abandoning any exchange."""
        self._waiter = None
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()
        self._pool._forget(self)

    def _fail(self, reason: UpstreamErrorReason, cause: str) -> None:
        waiter = self._waiter
        self._waiter = None
        self.reusable = False
        if waiter is not None and not waiter.done():
            message = f"upstream {self._pool._label}: {cause}"
            waiter.set_exception(UpstreamError(reason, message))
        if self._transport is not None:
            self._transport.abort()

    def _finish(self, keep_alive: bool) -> None:
        waiter = self._waiter
        self._waiter = None
        self.reusable = keep_alive
        if waiter is not None and not waiter.done():
            # strict UTF-8 where it works, as for the headers
            try:
                reason = self._reason.decode()
            except UnicodeDecodeError:
                reason = self._reason.decode("utf-8", "surrogateescape")
            body = b"".join(self._body)
            response = _response(self._status, reason, tuple(self._headers), body)
            waiter.set_result(response)

    def _head_keep_alive(self) -> bool:
        # the parser judges persistence at message end, which a HEAD
        # answer never reaches, so judge it here from version and header
        if b"close" in self._connection:
            return False
        if self._parser.get_http_version() == "1.0":
            return b"keep-alive" in self._connection
        return True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # bytes nobody asked for: the connection is out of step
        if self._waiter is None:
            self.reusable = False
            if self._transport is not None:
                self._transport.abort()
            return

        # count every byte that may belong to the head, before parsing
        self.started = True
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            if self._waiter is not None:
                self._fail("protocol", f"malformed response: {exc}")
            else:
                self.reusable = False
                if self._transport is not None:
                    self._transport.abort()
            return

        # a head still incomplete: bound it before it has any headers
        incomplete = not self._head_done and self._waiter is not None
        if incomplete and self._head_bytes > _MAX_HEAD_BYTES:
            self._fail("too_large", _HEAD_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.reusable = False
        if self._waiter is not None:
            # a body framed by neither length nor chunks ends at EOF
            framed = self._declared >= 0 or self._chunked
            if exc is None and self._head_done and not framed:
                self._finish(False)
            else:
                where = "mid-response" if self.started else "before a response"
                detail = f": {exc}" if exc is not None else ""
                self._fail("reset", f"connection closed {where}{detail}")
        if not self.lost.done():
            self.lost.set_result(None)
        self._pool._forget(self)

    # httptools callbacks

    def on_message_begin(self) -> None:
        # a second message after the answer: never reuse this connection
        if self._waiter is None:
            self.reusable = False
            return
        self._reason = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._declared = -1
        self._chunked = False
        self._connection = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # strict UTF-8 gives the same text as surrogateescape wherever it
        # succeeds, without parsing the codec arguments on every call
        try:
            self._headers.append((name.decode(), value.decode()))
        except UnicodeDecodeError:
            self._headers.append(
                (
                    name.decode("utf-8", "surrogateescape"),
                    value.decode("utf-8", "surrogateescape"),
                )
            )

        # remember what framing and persistence depend on
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            self._declared = int(value) if value.strip().isdigit() else 0
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.rstrip().lower().endswith(b"chunked")
        elif size == 10 and name.lower() == b"connection":
            self._connection = value.lower()

    def on_headers_complete(self) -> None:
        if self._waiter is None:
            return
        # XXX: summing every header costs a loop per answer, so it runs
        # only when enough bytes arrived for the head to be over its limit
        may_be_over = self._head_bytes > _HEAD_SUM_FROM
        if may_be_over and _head_size(self._headers) > _MAX_HEAD_BYTES:
            self._fail("too_large", _HEAD_TOO_LARGE)
            raise _Abort
        status = self._parser.get_status_code()
        if status < 200:
            return
        self._status = status
        self._head_done = True

        if self._is_head:
            self._renew_parser = True
            self._finish(self._head_keep_alive())
            return

        # refuse a declared oversize body before reading any of it
        limit = self._pool._max_body
        if self._declared > limit and status != 204 and status != 304:
            self._fail("too_large", f"declared body of {self._declared} bytes")
            raise _Abort

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            self.reusable = False
            return
        self._body_size += len(body)
        if self._body_size > self._pool._max_body:
            limit = self._pool._max_body
            self._fail("too_large", f"response body over {limit} bytes")
            raise _Abort
        self._body.append(body)

    def on_message_complete(self) -> None:
        # interim 1xx answers end here too; the final answer follows
        if self._waiter is None or not self._head_done:
            return
        self._finish(self._parser.should_keep_alive())


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
        "_label",
        "_loop",
        "_max_body",
        "_max_connections",
        "_max_idle",
        "_origin",
        "_server_hostname",
        "_slot_waiters",
        "_ssl",
        "_sweeper",
        "_timeout_cause",
        "_total_timeout",
    )

    def __init__(
        self,
        origin: Origin,
        settings: PoolSettings = _DEFAULT_SETTINGS,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = origin
        self._label = f"{origin.scheme}://{origin.host_header}"
        self._host_line = f"Host: {origin.host_header}\r\n"
        self._max_idle = settings.max_idle
        self._idle_timeout = settings.idle_timeout
        self._connect_timeout = settings.connect_timeout
        self._total_timeout = settings.total_timeout
        self._timeout_cause = (
            f"no complete response within {settings.total_timeout:g} s"
        )
        self._max_body = settings.max_response_bytes
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
        self._idle: collections.deque[_Connection] = collections.deque()
        self._conns: set[_Connection] = set()
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
        data = self._encode(method, target, headers, body)
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
        return UpstreamError(reason, f"upstream {self._label}: {cause}")

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
        logger.debug("stale connection to %s, retrying once", self._label)
        conn = await self._connect(deadline)
        return await self._round_trip(conn, data, is_head, deadline)

    async def _round_trip(
        self, conn: _Connection, data: bytes, is_head: bool, deadline: _Deadline
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

    async def _connect(self, deadline: _Deadline) -> _Connection:
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
                    lambda: _Connection(self, loop),
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
        logger.debug("connection %d open to %s", len(self._conns), self._label)

        # the deadline passed as the connect completed: keep it for later
        if deadline.expired:
            self._release(conn)
            raise self._error("timeout", self._timeout_cause)
        return conn

    # idle stack

    def _checkout(self) -> _Connection | None:
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

    def _release(self, conn: _Connection) -> None:
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

    def _forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)

    # request encoding

    def _encode(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> bytes:
        if method not in _KNOWN_METHODS and not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method: {method!r}")
        raw_target = _encode_target(target)

        # the header lines: the caller's, then the pool's framing
        lines: list[str] = []
        has_host = False
        for name, value in headers:
            kind = _NAME_KINDS.get(name)
            if kind is None:
                kind = _classify(name)
            # a CR or LF would start a header of the caller's making; a
            # header the pool drops is refused for one all the same
            if "\r" in value or "\n" in value or "\x00" in value:
                raise ValueError(f"header {name!r} has CR, LF or NUL in its value")
            if kind == _DROP:
                continue
            if kind == _HOST:
                has_host = True
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            lines.insert(0, self._host_line)
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        text = "".join(lines)
        try:
            block = text.encode()
        except UnicodeEncodeError:
            block = text.encode("utf-8", "surrogateescape")
        return b"".join(
            (method.encode(), b" ", raw_target, _HTTP11, block, _CRLF, body)
        )


def _head_size(headers: list[tuple[str, str]]) -> int:
    # in bytes as they came, which surrogateescape gives back exactly
    return sum(
        len(name.encode("utf-8", "surrogateescape"))
        + len(value.encode("utf-8", "surrogateescape"))
        + 4
        for name, value in headers
    )


# XXX: a frozen dataclass's __init__ stores each field through
# object.__setattr__, some 6,000 instructions per answer; the slot
# descriptors store the same fields in a third of that. _response must
# set every field of UpstreamResponse (a test holds it to that).
_RESPONSE_FIELDS: Final = (
    UpstreamResponse.__dict__["status"].__set__,
    UpstreamResponse.__dict__["reason"].__set__,
    UpstreamResponse.__dict__["headers"].__set__,
    UpstreamResponse.__dict__["body"].__set__,
)


def _response(
    status: int, reason: str, headers: tuple[tuple[str, str], ...], body: bytes
) -> UpstreamResponse:
    response: UpstreamResponse = object.__new__(UpstreamResponse)
    set_status, set_reason, set_headers, set_body = _RESPONSE_FIELDS
    set_status(response, status)
    set_reason(response, reason)
    set_headers(response, headers)
    set_body(response, body)
    return response


def _encode_target(target: str) -> bytes:
    """The target in origin form, or "*", with no space, control byte or
    DEL; UTF-8 writes every other character as bytes over 0x7f."""
    # strict UTF-8 gives the same bytes as surrogateescape wherever it
    # succeeds, without parsing the codec arguments on every call
    try:
        raw = target.encode()
    except UnicodeEncodeError:
        try:
            raw = target.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = b""
    form_ok = raw[:1] == b"/" or raw == b"*"
    # the table changes exactly the bytes refused; one pass over it in C
    # is several times faster than str.isprintable or a regex search
    if not form_ok or raw.translate(_TARGET_CHECK) != raw:
        raise ValueError(f"invalid request target: {target!r}")
    return raw


def _classify(name: str) -> int:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name: {name!r}")
    lower = name.lower()
    if lower in _POOL_WRITTEN:
        kind = _DROP
    elif lower == "host":
        kind = _HOST
    else:
        kind = _KEEP
    if len(_NAME_KINDS) < _NAME_KINDS_MAX:
        _NAME_KINDS[name] = kind
    return kind
