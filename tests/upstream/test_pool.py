"""The event-path connection pool against real servers on 127.0.0.1.

Normal HTTP behaviour is checked against aiohttp's server; framing edge
cases and faults against small raw asyncio servers that write exactly the
bytes each test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import gzip
import ipaddress
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_aiohttp import AiohttpServer

from proxy.upstream.pool import (
    Origin,
    PoolSettings,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)

pytestmark = pytest.mark.timeout(10)

FAST = PoolSettings(connect_timeout=1.0, total_timeout=2.0)
EVENT_TARGET = "//api_v3/index.php?service=stats&event:userId=a%2540b"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def limits(**changes: Any) -> PoolSettings:
    """The fast test settings with some limits changed."""
    return dataclasses.replace(FAST, **changes)


MakePool = Callable[..., UpstreamPool]
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[UpstreamPool] = []

    def make(
        port: int,
        settings: PoolSettings = FAST,
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
    ) -> UpstreamPool:
        origin = Origin(scheme, "127.0.0.1", port)
        pool = UpstreamPool(origin, settings, ssl_context=ssl_context)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def get(pool: UpstreamPool, target: str = "/") -> UpstreamResponse:
    return await pool.request("GET", target, [])


def header_values(response: UpstreamResponse, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# raw servers


class RawServer:
    """A loopback server running ``handle`` per connection, counting them."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[Writer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        await self._server.wait_closed()

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)


async def read_request(reader: Reader) -> bytes | None:
    """One request, head and body; None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answering(*responses: bytes) -> Handler:
    """Answer a connection's requests with ``responses`` in turn, then wait
    for the client to close."""

    async def handle(reader: Reader, writer: Writer) -> None:
        for response in responses:
            if await read_request(reader) is None:
                return
            writer.write(response)
            await writer.drain()
        await reader.read()

    return handle


def keep_answering(response: bytes, delay: float = 0.0) -> Handler:
    """Answer every request with ``response`` after ``delay`` seconds."""

    async def handle(reader: Reader, writer: Writer) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(delay)
            writer.write(response)
            await writer.drain()

    return handle


async def silent(reader: Reader, writer: Writer) -> None:
    await reader.read()


# Origin


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://stats.kaltura.com", Origin("http", "stats.kaltura.com", 80)),
        ("https://Stats.Kaltura.com/", Origin("https", "stats.kaltura.com", 443)),
        ("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080)),
        ("https://[::1]:8443/", Origin("https", "::1", 8443)),
    ],
)
def test_origin_from_url_reads_scheme_host_and_port(url: str, expected: Origin) -> None:
    assert Origin.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://stats.kaltura.com",
        "stats.kaltura.com:80",
        "http://",
        "http://stats.kaltura.com/api_v3",
        "http://stats.kaltura.com/?service=stats",
        "http://stats.kaltura.com#top",
        "http://user@stats.kaltura.com",
        "http://stats.kaltura.com:99999",
        "http://stats.kaltura.com:",
        "http://stats kaltura.com",
    ],
)
def test_origin_from_url_rejects_anything_but_an_origin(url: str) -> None:
    with pytest.raises(ValueError, match="upstream origin") as caught:
        Origin.from_url(url)
    assert repr(url) in str(caught.value)


def test_host_header_shows_the_port_only_when_not_the_default() -> None:
    assert Origin("http", "a.example", 80).host_header == "a.example"
    assert Origin("https", "a.example", 443).host_header == "a.example"
    assert Origin("https", "a.example", 80).host_header == "a.example:80"
    assert Origin("http", "::1", 8080).host_header == "[::1]:8080"


def test_origin_refuses_a_host_that_would_break_the_host_header() -> None:
    with pytest.raises(ValueError, match="invalid origin host"):
        Origin("http", "stats.kaltura.com\r\nX-Evil: 1", 80)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_connections": 0},
        {"max_idle": -1},
        {"max_response_bytes": -1},
        {"total_timeout": 0},
        {"connect_timeout": -1.0},
        {"idle_timeout": 0.0},
    ],
)
def test_pool_settings_refuse_impossible_limits(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        PoolSettings(**changes)


def test_responses_are_built_with_every_field_of_the_dataclass() -> None:
    # the pool builds its answers without UpstreamResponse.__init__
    from proxy.upstream.model import build_response

    names = [field.name for field in dataclasses.fields(UpstreamResponse)]
    assert names == ["status", "reason", "headers", "body"]
    built = build_response(201, "Created", (("A", "1"),), b"x")
    assert built == UpstreamResponse(201, "Created", (("A", "1"),), b"x")
    assert type(built) is UpstreamResponse
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.status = 200  # type: ignore[misc]


# request writing


async def test_request_is_written_verbatim_with_the_pools_own_framing(
    make_pool: MakePool,
) -> None:
    seen: list[bytes] = []

    async def capture(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        assert request is not None
        seen.append(request)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async with RawServer(capture) as server:
        pool = make_pool(server.port)
        headers = [
            ("X-Forwarded-For", "203.0.113.7"),
            ("user-agent", "kdp/3.9"),
            ("Content-Length", "999"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("Cookie", "a=1"),
        ]
        response = await pool.request("POST", EVENT_TARGET, headers, b"ev=1")

    assert response.status == 200
    assert seen == [
        f"POST {EVENT_TARGET} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "X-Forwarded-For: 203.0.113.7\r\n"
        "user-agent: kdp/3.9\r\n"
        "Cookie: a=1\r\n"
        "Content-Length: 4\r\n"
        "\r\n"
        "ev=1".encode()
    ]


@pytest.mark.parametrize(
    ("method", "body", "content_length"),
    [
        ("GET", b"", None),
        ("HEAD", b"", None),
        ("POST", b"", b"0"),
        ("PUT", b"x", b"1"),
        ("GET", b"abc", b"3"),
    ],
)
async def test_content_length_is_written_for_a_body_or_a_body_method(
    make_pool: MakePool, method: str, body: bytes, content_length: bytes | None
) -> None:
    seen: list[bytes] = []
    head_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def capture(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        assert request is not None
        seen.append(request)
        writer.write(head_ok)
        await writer.drain()
        await reader.read()

    async with RawServer(capture) as server:
        await make_pool(server.port).request(method, "/", [], body)

    lines = seen[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    lengths = [line[16:] for line in lines if line.startswith(b"Content-Length: ")]
    assert lengths == ([] if content_length is None else [content_length])


async def test_caller_host_header_is_kept_and_no_second_host_is_added(
    make_pool: MakePool,
) -> None:
    seen: list[bytes] = []

    async def capture(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        assert request is not None
        seen.append(request)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async with RawServer(capture) as server:
        pool = make_pool(server.port)
        await pool.request("GET", "/", [("host", "stats.kaltura.com")])

    assert seen[0] == b"GET / HTTP/1.1\r\nhost: stats.kaltura.com\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Injected", "a\r\nX-Evil: 1")],
        [("X-Injected", "a\nX-Evil: 1")],
        [("X-Injected", "a\rb")],
        [("X-Injected", "a\x00b")],
        [("X-Evil: 1\r\nX-Injected", "a")],
        [("X Injected", "a")],
        [("", "a")],
        [("Connection", "close\r\nX-Evil: 1")],
        [("Host", "a\r\n\r\nGET /evil HTTP/1.1")],
    ],
)
async def test_header_injection_is_rejected_before_any_connection(
    make_pool: MakePool, headers: list[tuple[str, str]]
) -> None:
    async with RawServer(answering(OK)) as server:
        pool = make_pool(server.port)
        with pytest.raises(ValueError, match="header"):
            await pool.request("GET", "/", headers)
        assert pool.open_connections == 0
    assert server.connections == 0


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/a b"),
        ("GET", "/a\r\nX-Evil: 1"),
        ("GET", "/a\tb"),
        ("GET", "/a\x7fb"),
        ("GET", ""),
        ("GET", "http://elsewhere.example/"),
        ("GE T", "/"),
        ("GET\r\n", "/"),
    ],
)
async def test_bad_method_or_target_is_rejected_before_any_connection(
    make_pool: MakePool, method: str, target: str
) -> None:
    async with RawServer(answering(OK)) as server:
        pool = make_pool(server.port)
        with pytest.raises(ValueError, match="invalid"):
            await pool.request(method, target, [])
    assert server.connections == 0


async def test_non_ascii_target_and_escaped_bytes_are_written_as_utf8(
    make_pool: MakePool,
) -> None:
    seen: list[bytes] = []

    async def capture(reader: Reader, writer: Writer) -> None:
        request = await read_request(reader)
        assert request is not None
        seen.append(request)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    # aiohttp hands non-UTF-8 request bytes on as surrogate escapes
    raw_value = b"caf\xe9".decode("utf-8", "surrogateescape")
    async with RawServer(capture) as server:
        pool = make_pool(server.port)
        await pool.request("GET", "/caf\u00e9/\udcff", [("X-Raw", raw_value)])

    assert seen[0] == (
        b"GET /caf\xc3\xa9/\xff HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"X-Raw: caf\xe9\r\n\r\n"
    )


@pytest.mark.parametrize("target", ["/a\ud800b", "/\u00e9 x", "/\u00e9\x00"])
async def test_target_that_cannot_be_written_safely_is_rejected(
    make_pool: MakePool, target: str
) -> None:
    async with RawServer(answering(OK)) as server:
        pool = make_pool(server.port)
        with pytest.raises(ValueError, match="invalid request target"):
            await pool.request("GET", target, [])
    assert server.connections == 0


# normal behaviour against aiohttp's server

PEERS = web.AppKey("peers", set[object])


@web.middleware
async def count_peers(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    assert request.transport is not None
    request.app[PEERS].add(request.transport.get_extra_info("peername"))
    return await handler(request)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": body.decode(),
        }
    )


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    for cookie in ("a=1; Path=/", "b=2; Path=/", "c=3; Path=/"):
        response.headers.add("Set-Cookie", cookie)
    return response


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"one,", b"two,", b"three"):
        await response.write(part)
    await response.write_eof()
    return response


GZIPPED = gzip.compress(b'{"result": "ok"}' * 50)


async def gzipped(request: web.Request) -> web.Response:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    return web.Response(body=GZIPPED, headers=headers)


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


@pytest.fixture
async def app_server(aiohttp_server: AiohttpServer) -> Any:
    app = web.Application(middlewares=[count_peers])
    app[PEERS] = set()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "//api_v3/index.php", echo)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/hello", hello)
    app.router.add_get("/empty", no_content)
    return await aiohttp_server(app)


async def test_aiohttp_server_receives_target_headers_and_body_as_sent(
    app_server: Any, make_pool: MakePool
) -> None:
    pool = make_pool(app_server.port)
    headers = [
        ("X-Kaltura-B", "2"),
        ("x-kaltura-a", "1"),
        ("Referer", "https://p.example/"),
    ]

    response = await pool.request("POST", EVENT_TARGET, headers, b"eventType=3")

    assert response.status == 200
    assert response.reason == "OK"
    seen = json.loads(response.body)
    assert seen["method"] == "POST"
    assert seen["raw_path"] == EVENT_TARGET
    assert seen["body"] == "eventType=3"
    assert seen["headers"] == [
        ["Host", f"127.0.0.1:{app_server.port}"],
        ["X-Kaltura-B", "2"],
        ["x-kaltura-a", "1"],
        ["Referer", "https://p.example/"],
        ["Content-Length", "11"],
    ]


async def test_repeated_set_cookie_headers_are_kept_in_order(
    app_server: Any, make_pool: MakePool
) -> None:
    response = await get(make_pool(app_server.port), "/cookies")

    assert header_values(response, "Set-Cookie") == [
        "a=1; Path=/",
        "b=2; Path=/",
        "c=3; Path=/",
    ]


async def test_chunked_response_is_dechunked(
    app_server: Any, make_pool: MakePool
) -> None:
    response = await get(make_pool(app_server.port), "/chunked")

    assert header_values(response, "Transfer-Encoding") == ["chunked"]
    assert response.body == b"one,two,three"


async def test_gzip_body_is_passed_through_still_compressed(
    app_server: Any, make_pool: MakePool
) -> None:
    response = await get(make_pool(app_server.port), "/gzip")

    assert header_values(response, "Content-Encoding") == ["gzip"]
    assert response.body == GZIPPED


async def test_twenty_sequential_requests_share_one_connection(
    app_server: Any, make_pool: MakePool
) -> None:
    pool = make_pool(app_server.port)

    for i in range(20):
        response = await pool.request("GET", f"/echo/{i}", [])
        assert json.loads(response.body)["raw_path"] == f"/echo/{i}"

    assert len(app_server.app[PEERS]) == 1
    assert pool.open_connections == 1
    assert pool.idle_connections == 1


async def test_head_response_has_no_body_and_the_connection_is_reused(
    app_server: Any, make_pool: MakePool
) -> None:
    pool = make_pool(app_server.port)

    head = await pool.request("HEAD", "/hello", [])
    after = await get(pool, "/hello")

    assert head.status == 200
    assert head.body == b""
    assert header_values(head, "Content-Length") == ["5"]
    assert after.body == b"hello"
    assert len(app_server.app[PEERS]) == 1


async def test_204_response_has_no_body_and_the_connection_is_reused(
    app_server: Any, make_pool: MakePool
) -> None:
    pool = make_pool(app_server.port)

    empty = await get(pool, "/empty")
    after = await get(pool, "/hello")

    assert empty.status == 204
    assert empty.body == b""
    assert after.body == b"hello"
    assert len(app_server.app[PEERS]) == 1


# https


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed 127.0.0.1 certificate, and a
    client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_origin_speaks_tls_with_the_given_context_and_reuses(
    aiohttp_server: AiohttpServer, make_pool: MakePool, tmp_path: Path
) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    app = web.Application(middlewares=[count_peers])
    app[PEERS] = set()
    app.router.add_get("/hello", hello)
    server = await aiohttp_server(app, ssl=server_context)
    pool = make_pool(server.port, scheme="https", ssl_context=client_context)

    for _ in range(3):
        assert (await get(pool, "/hello")).body == b"hello"

    assert len(app[PEERS]) == 1


async def test_https_origin_verifies_certificates_by_default(
    aiohttp_server: AiohttpServer, make_pool: MakePool, tmp_path: Path
) -> None:
    server_context, _ = tls_contexts(tmp_path)
    app = web.Application()
    app.router.add_get("/hello", hello)
    server = await aiohttp_server(app, ssl=server_context)
    pool = make_pool(server.port, scheme="https")

    with pytest.raises(UpstreamError) as caught:
        await get(pool, "/hello")

    assert caught.value.reason == "connect"


# framing edge cases


async def test_interim_100_continue_is_skipped(make_pool: MakePool) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with RawServer(answering(interim + OK, OK)) as server:
        pool = make_pool(server.port)
        first = await get(pool)
        second = await get(pool)

    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok")
    assert server.connections == 1


async def test_close_delimited_body_is_read_to_eof_and_not_reused(
    make_pool: MakePool,
) -> None:
    async def until_close(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        writer.write(b"part one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    async with RawServer(until_close) as server:
        pool = make_pool(server.port)
        response = await get(pool)

        assert response.body == b"part one, part two"
        assert pool.idle_connections == 0
        assert pool.open_connections == 0


async def test_head_ignores_the_declared_length_and_the_next_answer_parses(
    make_pool: MakePool,
) -> None:
    big_head = b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n"
    async with RawServer(answering(big_head, OK)) as server:
        pool = make_pool(server.port, limits(max_response_bytes=1000))
        head = await pool.request("HEAD", "/", [])
        after = await get(pool)

    assert (head.status, head.body) == (200, b"")
    assert after.body == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_response_refusing_keep_alive_is_not_kept_idle(
    make_pool: MakePool, response: bytes
) -> None:
    async with RawServer(keep_answering(response)) as server:
        pool = make_pool(server.port)
        assert (await get(pool)).body == b"ok"
        assert pool.idle_connections == 0
        assert (await get(pool)).body == b"ok"

    assert server.connections == 2


async def test_http10_response_with_keep_alive_is_reused(
    make_pool: MakePool,
) -> None:
    response = (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    )
    async with RawServer(keep_answering(response)) as server:
        pool = make_pool(server.port)
        await get(pool)
        await get(pool)

    assert server.connections == 1


async def test_header_and_reason_bytes_that_are_not_utf8_are_escaped(
    make_pool: MakePool,
) -> None:
    response = (
        b"HTTP/1.1 200 \xc9t\xe9\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"X-Utf8: caf\xc3\xa9\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    async with RawServer(answering(response)) as server:
        answer = await get(make_pool(server.port))

    def escaped(raw: bytes) -> str:
        return raw.decode("utf-8", "surrogateescape")

    assert answer.reason == escaped(b"\xc9t\xe9")
    assert answer.headers == (
        ("X-Latin", escaped(b"caf\xe9")),
        ("X-Utf8", "caf\u00e9"),
        ("Content-Length", "2"),
    )


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        # 15,000 empty headers take 4 bytes each on the wire, 60 KB in
        # all, but count 5 each towards the 64 KiB limit
        (b"A:\r\n" * 15_000, True),
        (b"X-Padding: " + b"x" * 60_000 + b"\r\n", False),
    ],
    ids=["many-small-headers", "one-large-header"],
)
async def test_head_limit_counts_headers_of_a_head_arriving_whole(
    make_pool: MakePool, headers: bytes, refused: bool
) -> None:
    response = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok"
    async with RawServer(answering(response)) as server:
        pool = make_pool(server.port)
        if refused:
            with pytest.raises(UpstreamError) as caught:
                await get(pool)
            assert caught.value.reason == "too_large"
        else:
            assert (await get(pool)).body == b"ok"


async def test_small_head_with_a_large_body_in_one_read_is_not_too_large(
    make_pool: MakePool,
) -> None:
    body = b"x" * 200_000
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with RawServer(answering(head + body)) as server:
        response = await get(make_pool(server.port))

    assert response.body == body


# stale keep-alive connections


async def test_stale_reused_connection_is_retried_once_on_a_fresh_one(
    make_pool: MakePool,
) -> None:
    async def hang_up_on_second(reader: Reader, writer: Writer) -> None:
        # answer one request, then close as the next one arrives, the way
        # an origin's idle timer races a reuse
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)

    async with RawServer(hang_up_on_second) as server:
        pool = make_pool(server.port)
        await get(pool)
        assert pool.idle_connections == 1

        response = await get(pool)

    assert response.body == b"ok"
    assert server.connections == 2


async def test_failure_on_a_fresh_connection_is_not_retried(
    make_pool: MakePool,
) -> None:
    async def hang_up(reader: Reader, writer: Writer) -> None:
        await read_request(reader)

    async with RawServer(hang_up) as server:
        pool = make_pool(server.port)
        with pytest.raises(UpstreamError) as caught:
            await get(pool)

    assert caught.value.reason == "reset"
    assert server.connections == 1


async def test_reused_connection_failing_after_response_bytes_is_not_retried(
    make_pool: MakePool,
) -> None:
    async def cut_second_answer(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()

    async with RawServer(cut_second_answer) as server:
        pool = make_pool(server.port)
        await get(pool)
        with pytest.raises(UpstreamError) as caught:
            await get(pool)

    assert caught.value.reason == "reset"
    assert server.connections == 1


async def test_idle_connection_closed_by_the_server_is_discarded(
    make_pool: MakePool,
) -> None:
    async def answer_then_close(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    async with RawServer(answer_then_close) as server:
        pool = make_pool(server.port)
        await get(pool)
        await eventually(lambda: pool.open_connections == 0)
        assert pool.idle_connections == 0

        assert (await get(pool)).body == b"ok"

    assert server.connections == 2


# faults


async def test_reset_mid_body_raises_reset(make_pool: MakePool) -> None:
    async def reset_mid_body(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        await asyncio.sleep(0.05)

        # linger 0 turns the close into a TCP RST
        sock = writer.get_extra_info("socket")
        linger = struct.pack("ii", 1, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    async with RawServer(reset_mid_body) as server:
        pool = make_pool(server.port)
        with pytest.raises(UpstreamError) as caught:
            await get(pool)

    assert caught.value.reason == "reset"
    assert "mid-response" in str(caught.value)
    assert pool.open_connections == 0


async def test_silent_server_times_out_within_total_timeout_and_is_closed(
    make_pool: MakePool,
) -> None:
    async with RawServer(silent) as server:
        pool = make_pool(server.port, limits(total_timeout=0.3))
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await get(pool)
        elapsed = time.monotonic() - started

        assert caught.value.reason == "timeout"
        assert 0.25 < elapsed < 1.0
        assert pool.open_connections == 0
        await eventually(lambda: server.open == 0)


async def test_waiting_for_a_free_connection_counts_against_total_timeout(
    make_pool: MakePool,
) -> None:
    # each answer takes 0.2 s: the second request waits 0.2 s for the only
    # connection, so it cannot finish within its 0.3 s
    async with RawServer(keep_answering(OK, delay=0.2)) as server:
        settings = limits(max_connections=1, total_timeout=0.3)
        pool = make_pool(server.port, settings)
        started = time.monotonic()
        first, second = await asyncio.gather(
            get(pool), get(pool), return_exceptions=True
        )
        elapsed = time.monotonic() - started

    assert isinstance(first, UpstreamResponse)
    assert first.body == b"ok"
    assert isinstance(second, UpstreamError)
    assert second.reason == "timeout"
    assert elapsed < 1.0
    assert server.connections == 1


async def test_request_still_waiting_for_a_slot_times_out_and_frees_its_place(
    make_pool: MakePool,
) -> None:
    # one connection answering in 0.2 s: the second request times out
    # while answered, the third while still waiting for the connection
    async with RawServer(keep_answering(OK, delay=0.2)) as server:
        settings = limits(max_connections=1, total_timeout=0.3)
        pool = make_pool(server.port, settings)
        started = time.monotonic()
        results = await asyncio.gather(
            get(pool), get(pool), get(pool), return_exceptions=True
        )
        elapsed = time.monotonic() - started

        assert isinstance(results[0], UpstreamResponse)
        for failed in results[1:]:
            assert isinstance(failed, UpstreamError)
            assert failed.reason == "timeout"
        assert elapsed < 1.0
        # nothing is left holding the only slot
        assert (await get(pool)).body == b"ok"


async def test_each_request_times_out_at_its_own_deadline(
    make_pool: MakePool,
) -> None:
    async with RawServer(silent) as server:
        pool = make_pool(server.port, limits(total_timeout=0.3))

        async def timed_get(delay: float) -> tuple[float, float]:
            await asyncio.sleep(delay)
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                await get(pool)
            assert caught.value.reason == "timeout"
            return started, time.monotonic()

        (start_1, end_1), (start_2, end_2) = await asyncio.gather(
            timed_get(0.0), timed_get(0.15)
        )

    # the later request is not cut short when the first one times out
    assert 0.25 < end_1 - start_1 < 1.0
    assert 0.25 < end_2 - start_2 < 1.0
    assert end_2 - end_1 > 0.1


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full, so
    that a connect to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


@pytest.mark.parametrize(
    ("connect_timeout", "total_timeout", "cause"),
    [
        (0.2, 2.0, "connect not done within 0.2 s"),
        (2.0, 0.2, "no complete response within 0.2 s"),
    ],
    ids=["connect-timeout-first", "total-timeout-first"],
)
async def test_hanging_connect_ends_at_the_earlier_timeout(
    make_pool: MakePool,
    unanswered_port: int,
    connect_timeout: float,
    total_timeout: float,
    cause: str,
) -> None:
    settings = limits(connect_timeout=connect_timeout, total_timeout=total_timeout)
    pool = make_pool(unanswered_port, settings)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await get(pool)
    elapsed = time.monotonic() - started

    assert caught.value.reason == "timeout"
    assert cause in str(caught.value)
    assert 0.15 < elapsed < 1.0
    assert pool.open_connections == 0


async def test_connection_refused_raises_connect_naming_the_origin(
    make_pool: MakePool,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(port)

    with pytest.raises(UpstreamError) as caught:
        await get(pool)

    assert caught.value.reason == "connect"
    assert f"http://127.0.0.1:{port}" in str(caught.value)


async def test_garbage_response_raises_protocol(make_pool: MakePool) -> None:
    async with RawServer(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server:
        pool = make_pool(server.port)
        with pytest.raises(UpstreamError) as caught:
            await get(pool)

    assert caught.value.reason == "protocol"
    assert pool.open_connections == 0


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"258\r\n"
        + b"x" * 600
        + b"\r\n"
        + b"258\r\n"
        + b"x" * 600
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 70_000 + b"\r\n\r\n",
    ],
    ids=["declared-length", "chunked", "close-delimited", "huge-head"],
)
async def test_oversized_response_raises_too_large_and_closes_the_connection(
    make_pool: MakePool, response: bytes
) -> None:
    async with RawServer(answering(response)) as server:
        pool = make_pool(server.port, limits(max_response_bytes=1000))
        with pytest.raises(UpstreamError) as caught:
            await get(pool)

        assert caught.value.reason == "too_large"
        assert pool.open_connections == 0
        await eventually(lambda: server.open == 0)


# limits and lifecycle


async def test_concurrency_cap_keeps_at_most_two_connections_open(
    make_pool: MakePool,
) -> None:
    async with RawServer(keep_answering(OK, delay=0.1)) as server:
        pool = make_pool(server.port, limits(max_connections=2))
        responses = await asyncio.gather(*(get(pool) for _ in range(5)))

    assert [r.body for r in responses] == [b"ok"] * 5
    assert server.max_open == 2
    assert server.connections == 2


async def test_max_idle_bounds_the_connections_kept(make_pool: MakePool) -> None:
    async with RawServer(keep_answering(OK, delay=0.05)) as server:
        pool = make_pool(server.port, limits(max_idle=1))
        await asyncio.gather(*(get(pool) for _ in range(3)))

        assert server.connections == 3
        assert pool.idle_connections == 1
        assert pool.open_connections == 1


async def test_idle_connection_past_idle_timeout_is_closed_and_not_reused(
    make_pool: MakePool,
) -> None:
    async with RawServer(keep_answering(OK)) as server:
        pool = make_pool(server.port, limits(idle_timeout=0.1))
        await get(pool)
        assert pool.idle_connections == 1

        await eventually(lambda: pool.open_connections == 0)
        assert pool.idle_connections == 0
        assert (await get(pool)).body == b"ok"

    assert server.connections == 2


async def test_requests_beyond_the_cap_are_served_in_arrival_order(
    make_pool: MakePool,
) -> None:
    async def echo_path(reader: Reader, writer: Writer) -> None:
        while (request := await read_request(reader)) is not None:
            path = request.split(b" ")[1]
            await asyncio.sleep(0.02)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(path)
            writer.write(head + path)
            await writer.drain()

    done: list[bytes] = []

    async def fetch(pool: UpstreamPool, i: int) -> None:
        done.append((await get(pool, f"/{i}")).body)

    async with RawServer(echo_path) as server:
        pool = make_pool(server.port, limits(max_connections=1))
        await asyncio.gather(*(fetch(pool, i) for i in range(5)))

    assert done == [b"/0", b"/1", b"/2", b"/3", b"/4"]
    assert server.connections == 1


async def test_cancelled_waiter_gives_up_its_place_and_no_slot_is_lost(
    make_pool: MakePool,
) -> None:
    async with RawServer(keep_answering(OK, delay=0.1)) as server:
        pool = make_pool(server.port, limits(max_connections=1))
        first = asyncio.ensure_future(get(pool))
        await eventually(lambda: server.connections == 1)
        waiting = asyncio.ensure_future(get(pool))
        await asyncio.sleep(0.02)
        waiting.cancel()
        third = asyncio.ensure_future(get(pool))

        assert (await first).body == b"ok"
        assert (await third).body == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # the cap of one still admits requests one after another
        for _ in range(3):
            assert (await get(pool)).body == b"ok"

    assert server.max_open == 1


async def test_slot_handed_to_a_waiter_cancelled_before_it_runs_passes_on(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with RawServer(keep_answering(OK, delay=0.05)) as server:
        pool = make_pool(server.port, limits(max_connections=1))
        first = asyncio.ensure_future(get(pool))
        await eventually(lambda: server.connections == 1)
        second = asyncio.ensure_future(get(pool))
        third = asyncio.ensure_future(get(pool))
        await asyncio.sleep(0.01)

        # cancel the second request just as the first hands it the slot,
        # before it can run: it must hand the slot on to the third
        release = UpstreamPool._release_slot

        def release_then_cancel(self: UpstreamPool) -> None:
            release(self)
            second.cancel()

        monkeypatch.setattr(UpstreamPool, "_release_slot", release_then_cancel)
        assert (await first).body == b"ok"
        assert (await third).body == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await second


async def test_close_fails_in_flight_and_later_requests_with_connect(
    make_pool: MakePool,
) -> None:
    async with RawServer(silent) as server:
        pool = make_pool(server.port)

        async def close_once_connected() -> None:
            await eventually(lambda: server.connections == 1)
            await pool.close()

        in_flight, _ = await asyncio.gather(
            get(pool), close_once_connected(), return_exceptions=True
        )
        assert isinstance(in_flight, UpstreamError)
        assert in_flight.reason == "connect"
        assert pool.open_connections == 0

        with pytest.raises(UpstreamError) as caught:
            await get(pool)
        assert caught.value.reason == "connect"
        assert server.connections == 1
