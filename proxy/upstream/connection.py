"""One keep-alive connection of the event pool, and the answer it reads.

The response is parsed by httptools' C parser; its callbacks gather the
status, the headers in wire order and the body, and enforce the limits:
the head at 64 KiB, the body at the pool's ``max_response_bytes``. A
failure of any kind ends the exchange's future with an UpstreamError and
never escapes a protocol callback.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast
from typing import Protocol as TypingProtocol

import httptools

from proxy.upstream.model import (
    UpstreamError,
    UpstreamErrorReason,
    UpstreamResponse,
    build_response,
)

# a response head (status line and headers) larger than this is refused
_MAX_HEAD_BYTES: Final = 64 * 1024
_HEAD_TOO_LARGE: Final = f"response head over {_MAX_HEAD_BYTES} bytes"
# a header line is at least 4 bytes and counts at most one more than it
# takes on the wire, so a head of fewer bytes than this is within the limit
_HEAD_SUM_FROM: Final = _MAX_HEAD_BYTES * 4 // 5


class _ResponseParser(TypingProtocol):
    """The part of ``httptools.HttpResponseParser`` this module uses."""

    def feed_data(self, data: bytes) -> None: ...
    def get_status_code(self) -> int: ...
    def get_http_version(self) -> str: ...
    def should_keep_alive(self) -> bool: ...


_PARSER_ERRORS: Final[tuple[type[Exception], ...]] = (
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)


class ConnectionOwner(TypingProtocol):
    """What a connection needs of its pool."""

    label: str  # the origin, for messages
    max_body: int  # the largest response body accepted

    def forget(self, conn: Connection) -> None:
        """Drop ``conn`` from the pool's books: it is closed for good."""


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing after a failure."""


class Connection(asyncio.Protocol):
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

    def __init__(self, pool: ConnectionOwner, loop: asyncio.AbstractEventLoop) -> None:
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
        self._pool.forget(self)

    def _fail(self, reason: UpstreamErrorReason, cause: str) -> None:
        waiter = self._waiter
        self._waiter = None
        self.reusable = False
        if waiter is not None and not waiter.done():
            message = f"upstream {self._pool.label}: {cause}"
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
            response = build_response(self._status, reason, tuple(self._headers), body)
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
        self._pool.forget(self)

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
        limit = self._pool.max_body
        if self._declared > limit and status != 204 and status != 304:
            self._fail("too_large", f"declared body of {self._declared} bytes")
            raise _Abort

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            self.reusable = False
            return
        self._body_size += len(body)
        if self._body_size > self._pool.max_body:
            limit = self._pool.max_body
            self._fail("too_large", f"response body over {limit} bytes")
            raise _Abort
        self._body.append(body)

    def on_message_complete(self) -> None:
        # interim 1xx answers end here too; the final answer follows
        if self._waiter is None or not self._head_done:
            return
        self._finish(self._parser.should_keep_alive())


def _head_size(headers: list[tuple[str, str]]) -> int:
    # in bytes as they came, which surrogateescape gives back exactly
    return sum(
        len(name.encode("utf-8", "surrogateescape"))
        + len(value.encode("utf-8", "surrogateescape"))
        + 4
        for name, value in headers
    )
