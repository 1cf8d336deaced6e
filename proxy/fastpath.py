"""A lean server protocol for the connections that carry player events.

Players send statistics events on keep-alive connections of their own, one
small request after another. aiohttp's full request machinery costs more
per request than the rest of the event path together, so the public port
is served by :class:`EventConnection`, an asyncio protocol that reads each
request head with httptools and answers events itself:

- a request is handled here only when it is a GET, or a POST whose small
  form or JSON body has a ``Content-Length``, under ``/api_v3/``, and
  :func:`~proxy.kaltura.recognise.recognise` finds events in it;
- any other request (a player file, an upload, a malformed head, an
  ``Expect``, a chunked body) hands the whole connection to aiohttp's
  server, starting from that request's first byte, and aiohttp serves it
  and everything after it on that connection.

Answers are written as the upstream gave them: its status line, headers
(less hop-by-hop ones) and body, with a ``Content-Length``.

Serves step 1 (reading a request) and step 5 (writing the answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import EventAnswer, EventRequest, ProxyApp
from proxy.kaltura.recognise import Recognised, is_api_path

logger = logging.getLogger("kstats.proxy")

_EVENT_MEDIA_TYPES: Final = (b"application/json", b"application/x-www-form-urlencoded")

# Headers that send a request to aiohttp's fuller handling.
_HANDED_OVER: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


@dataclass(slots=True)
class _Head:
    """A request head as httptools read it."""

    target: bytes = b""
    names: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    complete: bool = False
    keep_alive: bool = False
    parser: httptools.HttpRequestParser | None = None

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.append(name)
        self.values.append(value)

    def on_headers_complete(self) -> None:
        # llhttp forgets the connection flags once the message is complete
        self.complete = True
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


class Verdict(Enum):
    """Why :func:`read_event_request` returned no request."""

    NEED_MORE = "need more bytes"
    ELSEWHERE = "for aiohttp's server"
    LINE_TOO_LONG = "request line too long"  # 414
    HEAD_TOO_LARGE = "request head too large"  # 431


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The largest request line, header line and whole head, in bytes."""

    line: int = 16384
    field: int = 16384
    head: int = 65536


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request the event path can answer."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]
    keep_alive: bool
    http_10: bool
    head_size: int
    body_size: int


def _text(raw: bytes) -> str:
    # as aiohttp decodes request heads, so both paths see the same text
    return raw.decode("utf-8", "surrogateescape")


def read_event_request(
    buffer: bytearray, *, limits: HeadLimits, max_body: int
) -> ParsedRequest | Verdict:
    """Read the request at the start of ``buffer``.

    Returns the request when it is complete and the event path may answer
    it, or says that more bytes are needed, that it is aiohttp's to serve,
    or that its head is over the limits (whatever the request is).
    """
    head_end = buffer.find(b"\r\n\r\n", 0, limits.head + 4)
    line_end = buffer.find(b"\r\n", 0, limits.line + 2)
    if line_end < 0 and len(buffer) > limits.line:
        return Verdict.LINE_TOO_LONG
    if head_end < 0:
        return (
            Verdict.NEED_MORE if len(buffer) <= limits.head else Verdict.HEAD_TOO_LARGE
        )
    head_size = head_end + 4

    head = _Head()
    parser = head.parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(bytes(buffer[:head_size]))
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return Verdict.ELSEWHERE
    if any(
        len(name) + len(value) + 2 > limits.field
        for name, value in zip(head.names, head.values, strict=True)
    ):
        return Verdict.HEAD_TOO_LARGE
    method = parser.get_method()
    if not head.complete or method not in (b"GET", b"POST"):
        return Verdict.ELSEWHERE
    target = _text(head.target)
    if not target.startswith("/") or not is_api_path(target):
        return Verdict.ELSEWHERE

    # the body: none for GET, a small form or JSON document for POST
    length = 0
    media_type = b""
    for name, value in zip(head.names, head.values, strict=True):
        lower = name.lower()
        if lower in _HANDED_OVER:
            return Verdict.ELSEWHERE
        if lower == b"content-length":
            if not value.isdigit():
                return Verdict.ELSEWHERE
            length = int(value)
        elif lower == b"content-type":
            media_type = value.partition(b";")[0].strip().lower()
    if method == b"POST":
        if media_type not in _EVENT_MEDIA_TYPES or length > max_body:
            return Verdict.ELSEWHERE
    elif length:
        return Verdict.ELSEWHERE
    if len(buffer) < head_size + length:
        return Verdict.NEED_MORE

    headers: CIMultiDict[str] = CIMultiDict(
        zip(map(_text, head.names), map(_text, head.values), strict=True)
    )
    return ParsedRequest(
        method.decode(),
        target,
        CIMultiDictProxy(headers),
        head.keep_alive,
        parser.get_http_version() == "1.0",
        head_size,
        length,
    )


def render_answer(answer: EventAnswer, *, keep_alive: bool, http_10: bool) -> bytes:
    """The answer as bytes on the wire."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in answer.headers.items())
    lines.append(f"Content-Length: {len(answer.body)}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif http_10:
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + answer.body


class EventConnections:
    """The open event connections, for an orderly stop."""

    def __init__(self) -> None:
        self.open: set[EventConnection] = set()

    def close_idle(self) -> None:
        for connection in list(self.open):
            connection.close_if_idle()

    async def wait_busy(self, timeout: float) -> None:
        """Wait until no connection is answering, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.busy for c in self.open) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.open):
            connection.abort()


class EventConnection(asyncio.Protocol):
    """One client connection, answered here until a request is not an event."""

    def __init__(
        self,
        app: ProxyApp,
        fallback: Callable[[], asyncio.Protocol],
        connections: EventConnections,
        *,
        limits: HeadLimits,
        idle_timeout: float = 75.0,
    ) -> None:
        self._app = app
        self._fallback = fallback
        self._connections = connections
        self._limits = limits
        self._max_body = app.settings.max_event_body
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None  # of a request begun
        self._client_timeout = app.settings.client_timeout
        self._paused = False
        self.busy = False

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP server's
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else None
        self._connections.open.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._next_request()
        elif (
            len(self._buffer) > self._limits.head + self._max_body and not self._paused
        ):
            # a client that sends ahead while an answer is pending waits
            self._transport.pause_reading()  # type: ignore[union-attr]
            self._paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        # an event already read still goes upstream: its task is left to end
        self._connections.open.discard(self)
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()
        self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """A request not whole by its deadline: 408, and the connection goes."""
        self._deadline = None
        if not self.busy:
            self._refuse(
                b"408 Request Timeout",
                b"request not received in time\n",
                "slow_request",
            )

    def _refuse(self, status: bytes, body: bytes, reason: str) -> None:
        """Answer ``status`` with a short plain ``body`` and close the connection.

        TODO: input still unread when the socket closes can make the kernel
        send a reset that overtakes the answer; reading on for a moment
        before closing (as servers' lingering close does) would deliver it.
        """
        self._cancel_deadline()
        transport = self._transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        transport.close()
        self._buffer.clear()
        self._app.metrics.rejected.inc(reason)

    # -- requests -----------------------------------------------------------

    def _next_request(self) -> None:
        if self._transport is None or not self._buffer:
            return
        parsed = read_event_request(
            self._buffer, limits=self._limits, max_body=self._max_body
        )
        if parsed is Verdict.NEED_MORE:
            # a request has begun: it must be whole within the deadline
            if self._deadline is None:
                self._deadline = self._loop.call_later(
                    self._client_timeout, self._too_slow
                )
            return
        self._cancel_deadline()
        if parsed is Verdict.ELSEWHERE:
            self._hand_over()
            return
        if parsed is Verdict.LINE_TOO_LONG:
            self._refuse(
                b"414 URI Too Long", b"request line too long\n", "line_too_long"
            )
            return
        if parsed is Verdict.HEAD_TOO_LARGE:
            self._refuse(
                b"431 Request Header Fields Too Large",
                b"request header fields too large\n",
                "head_too_large",
            )
            return

        end = parsed.head_size + parsed.body_size
        body = bytes(self._buffer[parsed.head_size : end])
        recognised = self._app.recognise_events(
            parsed.method,
            parsed.target,
            parsed.headers.get("Content-Type"),
            body if parsed.method == "POST" else None,
        )
        if recognised is None or not recognised.events:
            self._hand_over()
            return

        del self._buffer[:end]
        self.busy = True
        if self._idle is not None:
            self._idle.cancel()
        self._task = self._loop.create_task(
            self._answer(parsed, recognised, body), name="kstats-event"
        )

    async def _answer(
        self, parsed: ParsedRequest, recognised: Recognised, body: bytes
    ) -> None:
        request = EventRequest(
            parsed.method,
            parsed.target,
            parsed.headers,
            self._peer,
            parsed.headers.get("Host", ""),
        )
        try:
            answer = await self._app.answer_events(request, recognised, body)
        except Exception:
            logger.exception("answering an event failed")
            headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain"})
            answer = EventAnswer(502, "Bad Gateway", headers, b"proxy error\n")

        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(
            render_answer(answer, keep_alive=parsed.keep_alive, http_10=parsed.http_10)
        )
        self.busy = False
        self._task = None
        if not parsed.keep_alive:
            transport.close()
            return
        if self._paused:
            transport.resume_reading()
            self._paused = False
        self._arm_idle_timer()
        self._next_request()

    def _hand_over(self) -> None:
        """Give the connection, from the current request on, to aiohttp."""
        transport = self._transport
        if transport is None:
            return
        self._connections.open.discard(self)
        if self._idle is not None:
            self._idle.cancel()

        self._cancel_deadline()
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        self._transport = None
        handler.data_received(data)

    # -- timers and stopping -------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._loop.call_later(self._idle_timeout, self.close_if_idle)

    def close_if_idle(self) -> None:
        if not self.busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def event_protocol_factory(
    app: ProxyApp,
    fallback: web.Server,
    connections: EventConnections,
    *,
    limits: HeadLimits,
) -> Callable[[], EventConnection]:
    """What ``loop.create_server`` needs to serve the public port."""
    return lambda: EventConnection(app, fallback, connections, limits=limits)
