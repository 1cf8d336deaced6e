"""Unit tests of proxy/headers.py: what goes upstream, what comes back.

Covers the client-address walk over trusted proxies, hop-by-hop removal
(fixed names and names listed in ``Connection``), the cookie allow-list
and the forwarding headers, believed from trusted peers only.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import (
    HOP_BY_HOP,
    ForwardingPolicy,
    client_address,
    parse_networks,
    response_headers,
    upstream_headers,
)

pytestmark = pytest.mark.timeout(10)

UPSTREAM_HOST = "kaltura.test"
UNTRUSTED_PEER = "203.0.113.9"
TRUSTED_PEER = "10.0.0.1"
PROXY_WRITTEN = frozenset(
    {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


def incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Request headers as aiohttp hands them to the proxy."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def policy(
    trusted: tuple[str, ...] = ("10.0.0.0/8",),
    *,
    cookies: frozenset[str] = frozenset(),
    scheme: str = "http",
) -> ForwardingPolicy:
    return ForwardingPolicy(
        upstream_host=UPSTREAM_HOST,
        trusted=parse_networks(trusted),
        forward_cookies=cookies,
        scheme=scheme,
    )


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    lower = name.lower()
    return [value for key, value in headers if key.lower() == lower]


def sent_upstream(
    *pairs: tuple[str, str],
    peer: str | None = UNTRUSTED_PEER,
    forwarding: ForwardingPolicy | None = None,
    keep_length: bool = True,
) -> list[tuple[str, str]]:
    return upstream_headers(
        incoming(*pairs),
        peer,
        forwarding or policy(),
        keep_length=keep_length,
    )


# client_address


CLIENT_ADDRESS_TABLE = [
    pytest.param((), "203.0.113.9", None, "203.0.113.9", id="no-header-peer"),
    pytest.param(
        (), "203.0.113.9", "198.51.100.7", "203.0.113.9", id="untrusted-peer-ignored"
    ),
    pytest.param(
        ("10.0.0.0/8",),
        "203.0.113.9",
        "198.51.100.7",
        "203.0.113.9",
        id="peer-outside-trusted-net-ignored",
    ),
    pytest.param(
        ("10.0.0.0/8",), "10.0.0.1", "198.51.100.7", "198.51.100.7", id="one-hop"
    ),
    pytest.param(
        ("10.0.0.0/8",),
        "10.0.0.1",
        "198.51.100.7, 10.0.0.2",
        "198.51.100.7",
        id="two-trusted-hops",
    ),
    pytest.param(
        ("10.0.0.0/8",),
        "10.0.0.1",
        "6.6.6.6, 198.51.100.7, 10.0.0.2",
        "198.51.100.7",
        id="forged-leftmost-entry-not-believed",
    ),
    pytest.param(
        ("10.0.0.0/8", "127.0.0.1/32"),
        "127.0.0.1",
        "198.51.100.7,10.1.2.3",
        "198.51.100.7",
        id="mixed-trusted-networks-no-spaces",
    ),
    pytest.param(
        ("10.0.0.0/8",),
        "10.0.0.1",
        "10.0.0.3, 10.0.0.2",
        "10.0.0.3",
        id="all-trusted-leftmost-wins",
    ),
    pytest.param(("10.0.0.0/8",), "10.0.0.1", "", "10.0.0.1", id="empty-header"),
    pytest.param(("10.0.0.0/8",), "10.0.0.1", " , ,", "10.0.0.1", id="only-separators"),
    pytest.param(("10.0.0.0/8",), "10.0.0.1", None, "10.0.0.1", id="trusted-no-xff"),
    pytest.param(
        ("::1/128",), "::1", "2001:db8::7", "2001:db8::7", id="ipv6-trusted-peer"
    ),
    pytest.param(
        ("::1/128", "fd00::/8"),
        "::1",
        "2001:db8::7, fd00::2",
        "2001:db8::7",
        id="ipv6-chain",
    ),
    pytest.param(
        ("10.0.0.0/8",),
        "10.0.0.1",
        "198.51.100.7, unknown",
        "unknown",
        id="non-address-hop-is-untrusted",
    ),
    pytest.param(("10.0.0.0/8",), None, "198.51.100.7", None, id="no-peer"),
]


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "expected"), CLIENT_ADDRESS_TABLE
)
def test_client_address_walks_forwarded_for_right_to_left_over_trusted_proxies(
    trusted: tuple[str, ...],
    peer: str | None,
    forwarded_for: str | None,
    expected: str | None,
) -> None:
    assert client_address(peer, forwarded_for, policy(trusted)) == expected


def test_non_address_text_is_never_trusted() -> None:
    forwarding = policy(("0.0.0.0/0", "::/0"))
    assert not forwarding.is_trusted("unknown")
    assert not forwarding.is_trusted("")
    assert forwarding.is_trusted("[2001:db8::1]")


def test_invalid_trusted_network_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


def test_trusted_network_with_host_bits_is_accepted() -> None:
    (network,) = parse_networks(["10.1.2.3/8"])
    assert str(network) == "10.0.0.0/8"


# hop-by-hop


def test_every_hop_by_hop_header_is_dropped() -> None:
    hop_by_hop = [(name.title(), "x") for name in sorted(HOP_BY_HOP)]
    sent = sent_upstream(("Accept", "*/*"), *hop_by_hop, ("X-After", "1"))
    assert {name.lower() for name in names(sent)}.isdisjoint(HOP_BY_HOP)
    assert values(sent, "Accept") == ["*/*"]
    assert values(sent, "X-After") == ["1"]


def test_headers_named_in_connection_are_dropped() -> None:
    sent = sent_upstream(
        ("Connection", "close, X-Trace"),
        ("Connection", " x-debug "),
        ("X-Trace", "abc"),
        ("X-Debug", "on"),
        ("X-Keep", "yes"),
    )
    lowered = {name.lower() for name in names(sent)}
    assert "x-trace" not in lowered
    assert "x-debug" not in lowered
    assert "connection" not in lowered
    assert values(sent, "X-Keep") == ["yes"]


def test_dropped_names_match_in_any_case() -> None:
    sent = sent_upstream(
        ("KEEP-ALIVE", "timeout=5"),
        ("content-LENGTH", "3"),
        ("x-forwarded-FOR", "198.51.100.7"),
        ("Transfer-encoding", "chunked"),
        ("X-Keep", "yes"),
        keep_length=False,
    )
    lowered = {name.lower() for name in names(sent)}
    assert lowered.isdisjoint({"keep-alive", "content-length", "transfer-encoding"})
    assert values(sent, "X-Keep") == ["yes"]
    assert values(sent, "X-Forwarded-For") == ["198.51.100.7, " + UNTRUSTED_PEER]


def test_a_name_in_one_requests_connection_is_kept_in_the_next_request() -> None:
    sent_upstream(("Connection", "X-Trace"), ("X-Trace", "abc"))
    sent = sent_upstream(("Connection", "keep-alive"), ("X-Trace", "def"))
    assert values(sent, "X-Trace") == ["def"]


def test_client_host_is_replaced_by_the_upstream_host() -> None:
    sent = sent_upstream(("Host", "evil.example"), ("Accept", "*/*"))
    assert sent[0] == ("Host", UPSTREAM_HOST)
    assert values(sent, "Host") == [UPSTREAM_HOST]


def test_end_to_end_headers_keep_order_case_and_repeats() -> None:
    sent = sent_upstream(
        ("Host", "proxy.test"),
        ("x-lower", "1"),
        ("X-Repeat", "a"),
        ("Accept", "*/*"),
        ("X-Repeat", "b"),
    )
    end_to_end = [pair for pair in sent if pair[0].lower() not in PROXY_WRITTEN]
    assert end_to_end == [
        ("x-lower", "1"),
        ("X-Repeat", "a"),
        ("Accept", "*/*"),
        ("X-Repeat", "b"),
    ]


@pytest.mark.parametrize("keep_length", [True, False])
def test_content_length_is_kept_only_for_a_body_relayed_as_it_came(
    keep_length: bool,
) -> None:
    sent = sent_upstream(("Content-Length", "12"), keep_length=keep_length)
    assert values(sent, "Content-Length") == (["12"] if keep_length else [])


def test_expect_is_not_forwarded() -> None:
    sent = sent_upstream(("Expect", "100-continue"), ("Content-Length", "3"))
    assert values(sent, "Expect") == []


# cookies


def test_no_cookie_goes_upstream_without_an_allow_list() -> None:
    sent = sent_upstream(("Cookie", "kms_ctamuls=secret; KalturaSession=abc"))
    assert values(sent, "Cookie") == []


def test_only_allow_listed_cookies_go_upstream() -> None:
    forwarding = policy(cookies=frozenset({"KalturaSession"}))
    sent = sent_upstream(
        ("Cookie", "kms_ctamuls=secret; KalturaSession=abc"),
        ("Cookie", "MoodleSession=s3cr3t;KalturaSessionX=no; kalturasession=no"),
        forwarding=forwarding,
    )
    assert values(sent, "Cookie") == ["KalturaSession=abc"]


def test_allow_listed_cookies_from_several_headers_are_joined() -> None:
    forwarding = policy(cookies=frozenset({"a", "b"}))
    sent = sent_upstream(
        ("Cookie", "a=1; legacy=x"),
        ("Cookie", "b=2"),
        forwarding=forwarding,
    )
    assert values(sent, "Cookie") == ["a=1; b=2"]


def test_no_cookie_header_when_no_allowed_cookie_is_present() -> None:
    forwarding = policy(cookies=frozenset({"KalturaSession"}))
    sent = sent_upstream(("Cookie", "PHPSESSID=legacy"), forwarding=forwarding)
    assert values(sent, "Cookie") == []


# forwarding headers


def test_forwarded_for_is_appended_with_the_peer() -> None:
    sent = sent_upstream(
        ("X-Forwarded-For", "198.51.100.7"),
        ("X-Forwarded-For", "192.0.2.1"),
        peer=TRUSTED_PEER,
    )
    assert values(sent, "X-Forwarded-For") == [
        f"198.51.100.7, 192.0.2.1, {TRUSTED_PEER}"
    ]


def test_forwarded_for_is_the_peer_when_the_client_sent_none() -> None:
    sent = sent_upstream(("Accept", "*/*"))
    assert values(sent, "X-Forwarded-For") == [UNTRUSTED_PEER]


def test_no_forwarded_for_without_a_peer_or_header() -> None:
    sent = sent_upstream(("Accept", "*/*"), peer=None)
    assert values(sent, "X-Forwarded-For") == []


def test_forged_proto_and_host_from_untrusted_peer_are_replaced() -> None:
    sent = sent_upstream(
        ("Host", "kms.example.edu"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        peer=UNTRUSTED_PEER,
    )
    assert values(sent, "X-Forwarded-Proto") == ["http"]
    assert values(sent, "X-Forwarded-Host") == ["kms.example.edu"]


def test_proto_and_host_from_trusted_peer_are_kept() -> None:
    sent = sent_upstream(
        ("Host", "proxy.internal"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "kms.example.edu"),
        peer=TRUSTED_PEER,
    )
    assert values(sent, "X-Forwarded-Proto") == ["https"]
    assert values(sent, "X-Forwarded-Host") == ["kms.example.edu"]


def test_trusted_peer_without_forwarding_headers_gets_listener_values() -> None:
    sent = sent_upstream(
        ("Host", "kms.example.edu"),
        peer=TRUSTED_PEER,
        forwarding=policy(scheme="https"),
    )
    assert values(sent, "X-Forwarded-Proto") == ["https"]
    assert values(sent, "X-Forwarded-Host") == ["kms.example.edu"]


def test_forwarding_headers_are_sent_once_each() -> None:
    sent = sent_upstream(
        ("Host", "kms.example.edu"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "a.example"),
        ("X-Forwarded-Host", "b.example"),
        peer=TRUSTED_PEER,
    )
    for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        assert len(values(sent, name)) == 1, name


# response headers


def test_response_keeps_repeated_set_cookie_in_order() -> None:
    answer = [
        ("Set-Cookie", "a=1"),
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "b=2; Path=/"),
        ("Set-Cookie", "c=3; HttpOnly"),
    ]
    out = response_headers(answer, keep_length=True)
    assert out.getall("Set-Cookie") == ["a=1", "b=2; Path=/", "c=3; HttpOnly"]


def test_response_drops_hop_by_hop_and_connection_named_headers() -> None:
    answer = [
        ("Connection", "keep-alive, X-Internal"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("X-Internal", "secret"),
        ("Content-Type", "text/plain"),
    ]
    out = response_headers(answer, keep_length=True)
    assert list(out.items()) == [("Content-Type", "text/plain")]


@pytest.mark.parametrize("keep_length", [True, False])
def test_response_content_length_follows_keep_length(keep_length: bool) -> None:
    out = response_headers([("Content-Length", "5")], keep_length=keep_length)
    assert out.getall("Content-Length", []) == (["5"] if keep_length else [])
