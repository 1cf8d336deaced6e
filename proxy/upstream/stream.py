"""Pass-through: everything that is not a player event, streamed both ways.

Player files, thumbnails, media downloads and other API calls go through
aiohttp's client on a pooled keep-alive connector. Bodies are streamed in
chunks in both directions, so memory stays flat whatever their size;
compressed bodies are relayed as they are (no decompression), redirects
are relayed, not followed, and every repeated header (``Set-Cookie``)
reaches the player.

Serves step 5 (forward).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.headers import response_headers

logger = logging.getLogger("kstats.upstream")

# How much of a streamed answer is read ahead of the player, at most
# twice this (aiohttp pauses reading there): larger reads mean fewer
# trips through the event loop per megabyte.
READ_BUFFER: Final = 256 * 1024


class StreamFailure(Exception):
    """The upstream could not be reached or did not answer in time.

    ``reason`` is a bounded label: ``connect``, ``timeout``, ``protocol``
    or ``reset``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _body_chunks(
    prefix: bytes,
    request: web.BaseRequest,
    idle_timeout: float,
    stalled: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The request body as it arrives.

    A client silent for ``idle_timeout`` seconds sets ``stalled`` (the
    forwarder then gives up on the whole exchange) and ends the body, so
    that it cannot hold a connection, here or upstream.
    """
    if prefix:
        yield prefix
    chunks = request.content.iter_any()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            stalled.set()
            return
        yield chunk


def _header_text(raw: bytes) -> str:
    """Header bytes as aiohttp's server will write them back: UTF-8."""
    return raw.decode("utf-8", "surrogateescape")


class _ClientStalled(TimeoutError):
    """The client stopped sending its request body."""


async def _unless_stalled(
    sending: Awaitable[aiohttp.ClientResponse], stalled: asyncio.Event
) -> aiohttp.ClientResponse:
    """The upstream's answer, or _ClientStalled once the client went silent."""
    loop = asyncio.get_running_loop()
    exchange = loop.create_task(_awaited(sending), name="kstats-stream-send")
    watch = loop.create_task(stalled.wait(), name="kstats-stream-stall")
    try:
        await asyncio.wait({exchange, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if exchange.done():
        return exchange.result()
    exchange.cancel()
    await asyncio.gather(exchange, return_exceptions=True)
    raise _ClientStalled("the client stopped sending its request body")


async def _awaited(
    sending: Awaitable[aiohttp.ClientResponse],
) -> aiohttp.ClientResponse:
    return await sending


class StreamingForwarder:
    """Relays one request and its answer without holding either whole."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_connections: int = 256,
        client_timeout: float = 30.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._client_timeout = client_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                read_bufsize=READ_BUFFER,
                # send only the headers the player sent, not aiohttp's own
                skip_auto_headers=(
                    "User-Agent",
                    "Accept",
                    "Accept-Encoding",
                    "Content-Type",
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def forward(
        self,
        request: web.BaseRequest,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        body_prefix: bytes = b"",
        body_complete: bool = False,
    ) -> web.StreamResponse:
        """Send ``request`` to ``target`` upstream and stream the answer back.

        ``body_prefix`` is what the proxy already read of the body; unless
        ``body_complete``, the rest still comes from the client's stream.
        """
        data: bytes | AsyncIterator[bytes] | None = None
        stalled = asyncio.Event()
        if body_complete and (body_prefix or request.body_exists):
            data = body_prefix
        elif not body_complete and request.body_exists:
            data = _body_chunks(body_prefix, request, self._client_timeout, stalled)

        # yarl would re-quote the target: hand it over encoded as it came
        url = URL(self._base_url + target, encoded=True)
        sending = self._client().request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            compress=None,
        )
        try:
            upstream = await _unless_stalled(sending, stalled)
        except TimeoutError as error:
            raise StreamFailure(
                "timeout", f"upstream {self._base_url}: {error!r}"
            ) from error
        except aiohttp.ClientConnectionError as error:
            raise StreamFailure(
                "connect", f"upstream {self._base_url}: {error}"
            ) from error
        except aiohttp.ClientError as error:
            # an answer that is not HTTP, or headers aiohttp will not parse
            message = f"upstream {self._base_url}: {error!r}"
            raise StreamFailure("protocol", message) from error

        async with upstream:
            # TODO: header bytes that are not UTF-8 are lost on the way to
            # the player (aiohttp's server drops the escaped bytes); writing
            # the response head ourselves would keep them.
            raw_headers = [
                (_header_text(name), _header_text(value))
                for name, value in upstream.raw_headers
            ]
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=response_headers(raw_headers, keep_length=True),
            )
            try:
                await response.prepare(request)
                await self._relay(request, upstream, response)
                await response.write_eof()
            except ConnectionResetError:
                # the player hung up (a seek, a closed tab): nothing is wrong
                logger.debug("the player left during a streamed answer")
        return response

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> None:
        """Copy the upstream's body to the player as it arrives.

        A failure reading the upstream is a StreamFailure; one writing to
        the player is its ConnectionResetError, left to the caller.
        """
        chunks = upstream.content.iter_any()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except (TimeoutError, aiohttp.ClientError) as error:
                # the status line is out already: cut the player's connection
                logger.warning(
                    "upstream broke off a streamed answer for %s: %r",
                    request.method,
                    error,
                )
                raise StreamFailure(
                    "reset", f"upstream {self._base_url}: {error!r}"
                ) from error
            await response.write(chunk)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
