"""The lean event protocol: what it answers itself, and what it hands over."""

from __future__ import annotations

import asyncio

import pytest
from support import load_records

from proxy.fastpath import HeadLimits, Verdict, read_event_request

EVENT = (
    "/api_v3/index.php?service=stats&action=collect&format=1"
    "&event:eventType=3&event:partnerId=1234"
)


def head(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: kms.example.edu", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read(raw: bytes) -> object:
    return read_event_request(bytearray(raw), limits=HeadLimits(), max_body=262144)


def test_an_event_get_is_read_with_its_sizes() -> None:
    raw = head("GET", EVENT, "Cookie: a=1")
    parsed = read(raw)
    assert not isinstance(parsed, Verdict)
    assert ("GET", EVENT, len(raw), 0) == (
        parsed.method,
        parsed.target,
        parsed.head_size,
        parsed.body_size,
    )
    assert "a=1" == parsed.headers["cookie"]
    assert parsed.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        head("GET", "/p/1234/sp/123400/flash"),
        head("HEAD", EVENT),
        head("OPTIONS", EVENT),
        head("GET", "http://evil.example" + EVENT),
        head("POST", EVENT, "Transfer-Encoding: chunked"),
        head("POST", EVENT, "Expect: 100-continue", body=b"a=1"),
        head("POST", EVENT, "Content-Type: multipart/form-data", body=b"x"),
        head("POST", EVENT, "Content-Type: application/json", body=b"x" * 300000),
        head("GET", EVENT, "Upgrade: websocket", "Connection: Upgrade"),
        b"GARBAGE / HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "player-file",
        "head",
        "preflight",
        "absolute-form",
        "chunked",
        "expect",
        "multipart",
        "oversized-body",
        "upgrade",
        "garbage",
    ],
)
def test_anything_but_a_small_event_goes_to_aiohttp(raw: bytes) -> None:
    assert Verdict.ELSEWHERE is read(raw)


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        pytest.param(
            b"GET / HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
            Verdict.HEAD_TOO_LARGE,
            id="one-header-over-16-KiB",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (n, b"y" * 9000) for n in range(8)),
            Verdict.HEAD_TOO_LARGE,
            id="a-head-over-64-KiB-unfinished",
        ),
        pytest.param(
            b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n",
            Verdict.LINE_TOO_LONG,
            id="request-line-over-16-KiB",
        ),
        pytest.param(
            b"GET /" + b"a" * 17000,
            Verdict.LINE_TOO_LONG,
            id="request-line-over-16-KiB-unfinished",
        ),
    ],
)
def test_a_head_over_the_limits_is_refused_whatever_the_request(
    raw: bytes, verdict: Verdict
) -> None:
    assert verdict is read(raw)


def test_a_head_just_within_the_limits_is_read() -> None:
    raw = head("GET", EVENT, "X-Pad: " + "y" * 16000)
    assert not isinstance(read(raw), Verdict)


def test_a_partial_head_or_body_waits_for_more_bytes() -> None:
    raw = head("POST", EVENT, "Content-Type: application/json", body=b'{"a": 1}')
    assert Verdict.NEED_MORE is read(raw[:20])
    assert Verdict.NEED_MORE is read(raw[:-3])
    assert not isinstance(read(raw), Verdict)


async def exchange(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, raw: bytes
) -> tuple[bytes, bytes]:
    writer.write(raw)
    await writer.drain()
    status_and_headers = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in status_and_headers.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status_and_headers, await reader.readexactly(length)


async def test_events_then_a_player_file_on_one_connection(
    upstream, start_proxy
) -> None:
    running = await start_proxy(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.ports[0])
    try:
        for _ in range(3):
            status, body = await exchange(writer, reader, head("GET", EVENT))
            assert status.startswith(b"HTTP/1.1 200") and b"true" == body

        # a non-event request hands the connection to aiohttp, which keeps
        # serving it, events included
        status, _ = await exchange(writer, reader, head("GET", "/p/1234/x.js"))
        assert status.startswith(b"HTTP/1.1 404")
        status, body = await exchange(writer, reader, head("GET", EVENT))
        assert b"true" == body
    finally:
        writer.close()
    targets = [r.target for r in upstream.standin.received]
    assert 4 == sum(t.startswith(EVENT) for t in targets)


async def test_pipelined_event_and_file_are_answered_in_order(
    upstream, start_proxy
) -> None:
    running = await start_proxy(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.ports[0])
    try:
        writer.write(
            head("GET", EVENT) + head("GET", "/p/1234/x.js") + head("GET", EVENT)
        )
        await writer.drain()
        answers = []
        for _ in range(3):
            status = await reader.readuntil(b"\r\n\r\n")
            length = int(status.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            answers.append((status.split(b"\r\n")[0], await reader.readexactly(length)))
    finally:
        writer.close()
    assert [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"] == [
        a[0] for a in answers
    ]
    assert b"true" == answers[0][1] == answers[2][1]


async def test_connection_close_and_http_10_are_honoured(upstream, start_proxy) -> None:
    running = await start_proxy(upstream.url)
    port = running.ports[0]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, _ = await exchange(writer, reader, head("GET", EVENT, "Connection: close"))
    assert b"Connection: close" in status
    assert b"" == await asyncio.wait_for(reader.read(), 5)  # closed by the proxy
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = f"GET {EVENT} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode()
    status, body = await exchange(writer, reader, raw)
    assert b"Connection: keep-alive" in status and b"true" == body
    status, body = await exchange(writer, reader, raw)
    assert b"true" == body
    writer.close()


async def test_a_kdp3_event_is_answered_with_the_upstreams_headers(
    upstream, start_proxy
) -> None:
    running = await start_proxy(upstream.url)
    record = load_records("legacy-players.jsonl")[6]
    reader, writer = await asyncio.open_connection("127.0.0.1", running.ports[0])
    try:
        status, body = await exchange(writer, reader, record.to_bytes())
    finally:
        writer.close()
    assert b"<result>1</result>" in body
    assert b"Access-Control-Allow-Origin: *" in status
    assert b"Content-Type: text/xml" in status


async def test_stopping_lets_an_event_in_flight_finish(
    aiohttp_server, start_proxy
) -> None:
    from aiohttp import web

    async def slow_kaltura(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="true", content_type="application/json")

    app = web.Application()
    app.router.add_get("/api_v3/index.php", slow_kaltura)
    server = await aiohttp_server(app)
    running = await start_proxy(f"http://127.0.0.1:{server.port}")

    reader, writer = await asyncio.open_connection("127.0.0.1", running.ports[0])
    writer.write(head("GET", EVENT))
    await writer.drain()
    await asyncio.sleep(0.1)  # the event is with the upstream now
    stopping = asyncio.ensure_future(running.stop(5.0))

    answer = await asyncio.wait_for(reader.read(), 5)
    await stopping
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"true")
