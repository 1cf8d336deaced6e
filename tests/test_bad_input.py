"""Bad input through a running proxy in front of the stand-in Kaltura.

Every case states its outcome: either the proxy answers a clear 4xx itself
and nothing reaches the upstream, or the request reaches the stand-in with
its target and body byte for byte as the client wrote them, for Kaltura to
judge. Never a 500, never a traceback in the body; and after each bad
request a good event on the same proxy still goes through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import pytest
from aiohttp import web
from support import RawResponse, send_raw

from proxy.kaltura.ks import make_ks_v1
from proxy.serve import RunningProxy
from proxy.standin import RecordedRequest, StandIn

pytestmark = pytest.mark.timeout(60)


class Upstream(Protocol):
    """The ``upstream`` fixture: a running stand-in Kaltura."""

    standin: StandIn
    url: str


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture(name="start_proxy")
def _start_proxy_without_widget_ks(
    start_proxy: ProxyFactory,
    tmp_path_factory: pytest.TempPathFactory,
    offline_rules: Path,
) -> ProxyFactory:
    """The shared factory, on the offline shipped rules with ``widget_ks = false``.

    These tests check that bad input reaches Kaltura byte for byte; a widget
    KS attached to an event with a user is SPEC 3's business, and has tests
    of its own (tests/test_widget_ks.py).
    """
    rules = tmp_path_factory.mktemp("rules")
    for shipped in offline_rules.iterdir():
        text = shipped.read_text()
        if shipped.name == "00-kaltura.toml":
            text = text.replace("[kaltura]\n", "[kaltura]\nwidget_ks = false\n")
        (rules / shipped.name).write_text(text)

    async def factory(upstream_url: str, **options: object) -> RunningProxy:
        options.setdefault("rules", rules)
        return await start_proxy(upstream_url, **options)

    return factory


STATS = "/api_v3/index.php?service=stats&action=collect"
GOOD_EVENT = f"{STATS}&event:eventType=3&event:partnerId=1234&event:entryId=0_abcdefgh"
JSON_STATS = "/api_v3/service/stats/action/collect"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass(frozen=True)
class Sent:
    """A request as bytes, with the target and body it carries."""

    request: bytes
    target: str
    body: bytes


def build(
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Sent:
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    head = [b"%s %s HTTP/1.1" % (method.encode(), raw_target), b"Host: proxy.test"]
    head += [f"{name}: {value}".encode("latin-1") for name, value in headers or []]
    if method == "POST":
        head.append(f"Content-Length: {len(body)}".encode())
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    return Sent(request, raw_target.decode("utf-8", "surrogateescape"), body)


def post(target: str, content_type: str | None, body: bytes) -> Sent:
    headers = [] if content_type is None else [("Content-Type", content_type)]
    return build("POST", target, headers, body)


def make_ks(user: str = "alice@example.edu") -> str:
    expiry = int(time.time()) + 3600
    return make_ks_v1(partner_id=1234, secret="testsecret", user_id=user, expiry=expiry)


async def send(proxy: RunningProxy, sent: Sent) -> RawResponse:
    response = await send_raw(proxy.ports[0], sent.request)
    assert response.status < 500, response.body[:300]
    assert b"Traceback" not in response.body
    assert b'File "' not in response.body
    return response


def assert_passed_unchanged(
    upstream: Upstream, sent: Sent, before: int
) -> RecordedRequest:
    """The stand-in got exactly one request: this one, byte for byte."""
    received = upstream.standin.received[before:]
    assert len(received) == 1, [r.target for r in received]
    seen = received[0]
    assert seen.target == sent.target
    assert seen.body == sent.body
    return seen


def assert_rejected(response: RawResponse, upstream: Upstream, before: int) -> None:
    assert 400 <= response.status < 500
    assert len(upstream.standin.received) == before


async def assert_still_serving(proxy: RunningProxy, upstream: Upstream) -> None:
    before = len(upstream.standin.received)
    response = await send_raw(proxy.ports[0], build("GET", GOOD_EVENT).request)
    assert response.status == 200
    assert b"<result>1</result>" in response.body
    assert len(upstream.standin.received) == before + 1


async def check_passed_on(
    proxy: RunningProxy, upstream: Upstream, sent: Sent
) -> tuple[RawResponse, RecordedRequest]:
    """Send ``sent``; it must reach the stand-in unchanged, and the proxy live on."""
    before = len(upstream.standin.received)
    response = await send(proxy, sent)
    assert response.status == 200
    seen = assert_passed_unchanged(upstream, sent, before)
    await assert_still_serving(proxy, upstream)
    return response, seen


async def check_rejected(
    proxy: RunningProxy, upstream: Upstream, sent: Sent
) -> RawResponse:
    before = len(upstream.standin.received)
    response = await send(proxy, sent)
    assert_rejected(response, upstream, before)
    await assert_still_serving(proxy, upstream)
    return response


# query strings


MALFORMED_QUERY_TAILS = [
    pytest.param("%zz", id="bad-percent-escape"),
    pytest.param("&&&", id="empty-segments"),
    pytest.param("=x", id="value-without-key"),
    pytest.param("%", id="lone-percent"),
    pytest.param("x=%", id="value-lone-percent"),
    pytest.param("event:userId&event:contextId&flag", id="keys-without-values"),
    pytest.param("event%3AapplicationId", id="encoded-key-without-value"),
    pytest.param("=&=&==", id="only-equals"),
    pytest.param("%%%25%2", id="percent-soup"),
    pytest.param("event:userId=%ff%fe%C0%AF", id="percent-encoded-invalid-utf8"),
    pytest.param("x=%00", id="percent-encoded-nul"),
    pytest.param("event:referrer=%", id="referrer-lone-percent"),
    pytest.param("event%zzuserId=a&event%3userId=b", id="broken-encoded-keys"),
]


@pytest.mark.parametrize("tail", MALFORMED_QUERY_TAILS)
async def test_malformed_query_is_passed_on_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory, tail: str
) -> None:
    proxy = await start_proxy(upstream.url)
    await check_passed_on(proxy, upstream, build("GET", f"{GOOD_EVENT}&{tail}"))


async def test_malformed_query_segments_survive_enrichment_byte_for_byte(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    referrer = "event:referrer=https%3A%2F%2Fpages.example.org%2Fwatch"
    target = f"{GOOD_EVENT}&{referrer}&%zz&&&=x&%&flag"
    before = len(upstream.standin.received)
    response = await send(proxy, build("GET", target))
    assert response.status == 200
    (seen,) = upstream.standin.received[before:]
    # the proxy added applicationId and kept every other byte in place
    assert seen.target == f"{target}&event:applicationId=pages.example.org"
    await assert_still_serving(proxy, upstream)


async def test_raw_invalid_utf8_in_the_query_gets_400(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    sent = build("GET", GOOD_EVENT.encode() + b"&event:userId=\xff\xfe")
    response = await check_rejected(proxy, upstream, sent)
    assert response.status == 400


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"api_v3/index.php", id="no-leading-slash"),
        pytest.param(b"*", id="asterisk-form"),
        pytest.param(b"/api_v3/index.php?a=\x01", id="control-character"),
    ],
)
async def test_invalid_request_target_gets_400(
    upstream: Upstream, start_proxy: ProxyFactory, target: bytes
) -> None:
    proxy = await start_proxy(upstream.url)
    response = await check_rejected(proxy, upstream, build("GET", target))
    assert response.status == 400


# JSON bodies


MALFORMED_JSON_BODIES = [
    pytest.param(b'{"event": {"eventType": 3,', id="truncated"),
    pytest.param(b"{", id="open-brace"),
    pytest.param(b"}", id="close-brace"),
    pytest.param(b"", id="empty"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"event"', id="string"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b'{"event": [1, 2]}', id="event-is-array"),
    pytest.param(b'{"event": "eventType=3"}', id="event-is-string"),
    pytest.param(
        b'{"event": {"eventType": {"a": 1}, "referrer": 5, "partnerId": true}, "ks": 7}',
        id="wrong-value-types",
    ),
    pytest.param(b'{"event": {"eventType": 3}} trailing', id="trailing-garbage"),
    pytest.param(b'{"event": {"eventType": 3}}}', id="extra-brace"),
    pytest.param(b'{"event": {"eventType": NaN}}', id="nan"),
    pytest.param(b'{"event": {"eventType": 1e999999}}', id="huge-number"),
    pytest.param(b'\xef\xbb\xbf{"event": {"eventType": 3}}', id="byte-order-mark"),
    pytest.param(
        b'{"event": {"eventType": 3, "userId": "\xff\xfe"}}', id="invalid-utf8"
    ),
    pytest.param(
        b'{"event": {"eventType": 3, "userId": "\\ud800"}}', id="lone-surrogate"
    ),
    pytest.param(b'{"a":' * 3000 + b"1" + b"}" * 3000, id="deep-nesting"),
    pytest.param(b'{"event": {"eventType": 3}, "event": 5}', id="duplicate-keys"),
]


@pytest.mark.parametrize("body", MALFORMED_JSON_BODIES)
async def test_malformed_json_body_is_passed_on_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory, body: bytes
) -> None:
    proxy = await start_proxy(upstream.url)
    await check_passed_on(proxy, upstream, post(JSON_STATS, JSON, body))


# content types


WRONG_CONTENT_TYPES = [
    pytest.param(
        "text/plain",
        b'{"event": {"eventType": 3, "partnerId": 1234}}',
        id="json-as-text",
    ),
    pytest.param(JSON, b"event:eventType=3&event:partnerId=1234", id="form-as-json"),
    pytest.param(
        FORM, b'{"event": {"eventType": 3, "partnerId": 1234}}', id="json-as-form"
    ),
    pytest.param(None, b"event:eventType=3&event:partnerId=1234", id="form-untyped"),
    pytest.param(";;;", b"event:eventType=3", id="garbage-type"),
    pytest.param(
        "multipart/form-data", b"event:eventType=3", id="multipart-no-boundary"
    ),
    pytest.param(
        "application/json; charset=latin-1",
        b'{"event": {"eventType": 3, "userId": "caf\xe9"}}',
        id="json-declared-latin1",
    ),
]


@pytest.mark.parametrize(("content_type", "body"), WRONG_CONTENT_TYPES)
async def test_wrong_content_type_is_passed_on_unchanged(
    upstream: Upstream,
    start_proxy: ProxyFactory,
    content_type: str | None,
    body: bytes,
) -> None:
    proxy = await start_proxy(upstream.url)
    _, seen = await check_passed_on(
        proxy, upstream, post(JSON_STATS, content_type, body)
    )
    assert seen.header("Content-Type") == content_type


# KS strings


def invalid_ks_values() -> list[object]:
    valid = make_ks()
    return [
        pytest.param("not-a-ks", id="plain-text"),
        pytest.param(valid[: len(valid) // 2], id="truncated"),
        pytest.param(valid[:-7], id="truncated-tail"),
        pytest.param("djJ8MTIzNHxhYmM=", id="v2-short-ciphertext"),
        pytest.param("MTIzNA==", id="base64-of-digits"),
        pytest.param("!!!!", id="not-base64"),
        pytest.param("A" * 5000, id="over-max-length"),
        pytest.param("caf\u00e9", id="non-ascii"),
    ]


@pytest.mark.parametrize("ks", invalid_ks_values())
async def test_invalid_ks_in_query_is_passed_on_for_kaltura_to_judge(
    upstream: Upstream, start_proxy: ProxyFactory, ks: str
) -> None:
    proxy = await start_proxy(upstream.url)
    sent = build("GET", f"{GOOD_EVENT}&ks={quote(ks, safe='')}")
    response, _ = await check_passed_on(proxy, upstream, sent)
    assert b"INVALID_KS" in response.body


KS_COOKIE_RULES = """\
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "legacy-ks-cookie"
userId = [{ cookie = "legacy_ks", decode = "ks" }]
"""


@pytest.fixture(name="ks_cookie_rules")
def _ks_cookie_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(KS_COOKIE_RULES)
    return path


def cookie_event(value: str) -> Sent:
    return build("GET", GOOD_EVENT, [("Cookie", f"other=1; legacy_ks={value}")])


async def test_valid_ks_cookie_adds_its_user(
    upstream: Upstream, start_proxy: ProxyFactory, ks_cookie_rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=ks_cookie_rules)
    response = await send(proxy, cookie_event(make_ks("bob@example.edu")))
    assert response.status == 200
    seen = upstream.standin.received[-1]
    assert seen.target == f"{GOOD_EVENT}&event:userId=bob%40example.edu"
    assert seen.header("Cookie") is None


@pytest.mark.parametrize("ks", [*invalid_ks_values(), pytest.param("", id="empty")])
async def test_invalid_ks_cookie_adds_no_user_and_passes_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory, ks_cookie_rules: Path, ks: str
) -> None:
    proxy = await start_proxy(upstream.url, rules=ks_cookie_rules)
    sent = cookie_event(quote(ks, safe="=+/"))
    _, seen = await check_passed_on(proxy, upstream, sent)
    assert seen.header("Cookie") is None


# invalid UTF-8 in bodies and headers


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b"event:eventType=3&event:partnerId=1234&event:userId=\xff\xfe", id="raw"
        ),
        pytest.param(
            b"event:eventType=3&event:userId=%ff%fe&x=%C0%AF", id="percent-encoded"
        ),
        pytest.param(b"\xff\xfe\xfd", id="only-invalid-bytes"),
    ],
)
async def test_invalid_utf8_in_form_body_is_passed_on_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory, body: bytes
) -> None:
    proxy = await start_proxy(upstream.url)
    await check_passed_on(proxy, upstream, post(STATS, FORM, body))


async def test_invalid_utf8_in_a_header_reaches_upstream_byte_for_byte_on_event_path(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    sent = build("GET", GOOD_EVENT)
    request = sent.request.replace(
        b"\r\n\r\n", b"\r\nX-Legacy: caf\xc3\xa9 \xff\xfe\r\n\r\n"
    )
    response = await send(proxy, Sent(request, sent.target, b""))
    assert response.status == 200
    seen = upstream.standin.received[-1]
    value = seen.header("X-Legacy")
    assert value is not None
    assert value.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff\xfe"
    await assert_still_serving(proxy, upstream)


# oversized bodies and headers


def big_json_event(size: int) -> bytes:
    head = b'{"event": {"eventType": 3, "partnerId": 1234}, "padding": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def test_oversized_json_event_is_streamed_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    body = big_json_event(1_000_000)
    assert len(body) > proxy.app.settings.max_event_body
    _, seen = await check_passed_on(proxy, upstream, post(JSON_STATS, JSON, body))
    assert seen.header("Content-Length") == str(len(body))


async def test_oversized_form_event_is_streamed_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    body = b"event:eventType=3&event:partnerId=1234&padding=" + b"y" * 999_000
    await check_passed_on(proxy, upstream, post(STATS, FORM, body))


async def test_oversized_chunked_json_event_without_length_is_streamed_unchanged(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url)
    body = big_json_event(1_000_000)
    size = 50_000
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    head = (
        f"POST {JSON_STATS} HTTP/1.1\r\nHost: proxy.test\r\n"
        f"Content-Type: {JSON}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    await check_passed_on(
        proxy, upstream, Sent(head + chunks + b"0\r\n\r\n", JSON_STATS, body)
    )


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET " + GOOD_EVENT.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\n"
            b"X-Big: " + b"a" * 17_000 + b"\r\n\r\n",
            id="header-line",
        ),
        pytest.param(
            b"GET " + GOOD_EVENT.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\n"
            b"Cookie: k=" + b"c" * 17_000 + b"\r\n\r\n",
            id="cookie-line",
        ),
        pytest.param(
            b"GET "
            + GOOD_EVENT.encode()
            + b"&pad="
            + b"p" * 17_000
            + b" HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
            id="request-line",
        ),
    ],
)
async def test_oversized_head_gets_414_or_431_and_proxy_still_serves(
    upstream: Upstream, start_proxy: ProxyFactory, request_bytes: bytes
) -> None:
    proxy = await start_proxy(upstream.url)
    response = await check_rejected(proxy, upstream, Sent(request_bytes, "", b""))
    line_too_long = b"&pad=" in request_bytes
    assert response.status == (414 if line_too_long else 431)
    assert response.body in (
        b"request line too long\n",
        b"request header fields too large\n",
    )


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: abc\r\n", id="non-numeric-length"),
        pytest.param(b"Content-Length: 2\r\nContent-Length: 3\r\n", id="two-lengths"),
        pytest.param(
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
            id="length-and-chunked",
        ),
    ],
)
async def test_ambiguous_body_framing_gets_400(
    upstream: Upstream, start_proxy: ProxyFactory, framing: bytes
) -> None:
    proxy = await start_proxy(upstream.url)
    request = (
        f"POST {JSON_STATS} HTTP/1.1\r\nHost: proxy.test\r\n"
        f"Content-Type: {JSON}\r\n".encode()
        + framing
        + b"\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    response = await check_rejected(proxy, upstream, Sent(request, "", b""))
    assert response.status == 400


# multirequest indices that are digits to str.isdigit() but not to int()


@dataclass
class Recorder:
    """A catch-all upstream that records targets and bodies and answers 200."""

    received: list[tuple[str, bytes]]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = b"".join([chunk async for chunk in request.content.iter_any()])
        self.received.append((request.raw_path, body))
        return web.Response(
            text="<xml><result></result></xml>", content_type="text/xml"
        )


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(
            build(
                "GET",
                "/api_v3/index.php?service=multirequest"
                "&%C2%B2:service=stats&%C2%B2:action=collect&%C2%B2:event:eventType=3",
            ),
            id="query",
        ),
        pytest.param(
            post(
                "/api_v3/index.php?service=multirequest",
                JSON,
                '{"\u00b2": {"service": "stats", "action": "collect"}}'.encode(),
            ),
            id="json",
        ),
    ],
)
async def test_superscript_digit_sub_request_index_is_passed_on_unchanged(
    aiohttp_raw_server, start_proxy: ProxyFactory, sent: Sent
) -> None:
    recorder = Recorder([])
    server = await aiohttp_raw_server(recorder.handle)
    proxy = await start_proxy(f"http://127.0.0.1:{server.port}")
    response = await send_raw(proxy.ports[0], sent.request)
    assert response.status == 200
    assert recorder.received == [(sent.target, sent.body)]


# -- slow clients and values that would break lines -------------------------------


async def _closed_after(reader: asyncio.StreamReader, seconds: float) -> bytes:
    return await asyncio.wait_for(reader.read(), seconds)


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(
            b"GET /api_v3/index.php?service=stats&action=collect HTTP/1.1\r\n",
            id="slow-headers",
        ),
        pytest.param(
            b"POST /api_v3/index.php?service=stats&action=collect HTTP/1.1\r\n"
            b"Host: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nevent:eventType=3",
            id="slow-body",
        ),
    ],
)
async def test_a_client_too_slow_to_send_its_request_gets_408_and_is_cut_off(
    upstream: Upstream, start_proxy: ProxyFactory, partial: bytes
) -> None:
    proxy = await start_proxy(upstream.url, client_timeout=0.3)
    before = len(upstream.standin.received)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
    writer.write(partial)
    await writer.drain()

    answer = await _closed_after(reader, 3)  # read() returns at EOF
    writer.close()

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert len(upstream.standin.received) == before
    assert 1 == proxy.app.metrics.rejected.value("slow_request")
    await assert_still_serving(proxy, upstream)


async def test_a_client_silent_in_a_streamed_upload_is_cut_off(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url, client_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
    writer.write(
        b"POST /api_v3/index.php?service=uploadToken&action=upload HTTP/1.1\r\n"
        b"Host: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000
    )
    await writer.drain()

    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()

    # the upload is abandoned, upstream too, and the client told so
    assert head.startswith(b"HTTP/1.1 504 ")
    assert 1 == proxy.app.metrics.upstream_failures.value("timeout")
    await assert_still_serving(proxy, upstream)


CRLF_COOKIE_RULES = """\
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "cookie-user"
userId = [{ cookie = "lms_user", decode = "url" }]
"""


async def test_crlf_in_a_cookie_value_cannot_add_a_header_upstream(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(CRLF_COOKIE_RULES)
    proxy = await start_proxy(upstream.url, rules=rules)
    value = "eve%0D%0AX-Injected:%201%0D%0A"

    response = await send(proxy, cookie_event_with("lms_user", value))

    assert response.status == 200
    seen = upstream.standin.received[-1]
    assert seen.header("X-Injected") is None
    assert "\r" not in seen.target and "\n" not in seen.target
    # the user with control characters is not a valid userId: none added
    assert "event:userId" not in seen.target


def cookie_event_with(name: str, value: str) -> Sent:
    return build("GET", GOOD_EVENT, [("Cookie", f"{name}={value}")])


async def test_a_body_over_the_declared_limit_gets_413_before_a_byte_is_read(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.url, max_request_body=1000)
    sent = Sent(
        b"POST /api_v3/index.php?service=uploadToken&action=upload HTTP/1.1\r\n"
        b"Host: proxy.test\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 5000\r\n\r\n" + b"x" * 5000,
        "",
        b"",
    )
    response = await check_rejected(proxy, upstream, sent)
    assert (413, b"request body too large\n") == (response.status, response.body)
