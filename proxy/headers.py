"""Step 5's headers: what goes upstream, and what comes back to the player.

Upstream requests lose the hop-by-hop headers (RFC 9110 7.6.1 and any the
``Connection`` header names), the ``Host`` (the upstream's own is sent,
whatever the client said) and the viewer's cookies, except those an
operator allow-listed: a legacy application's session cookie must never
reach Kaltura. They gain ``X-Forwarded-For``, ``-Proto`` and ``-Host``.

The client address is found by walking ``X-Forwarded-For`` right to left
past the trusted proxies: the first address that is not trusted is the
client. A forwarded header from an untrusted peer is never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Also never copied upstream: the proxy sets or recomputes these.
_REPLACED_UPSTREAM: Final = frozenset(
    {"host", "cookie", "expect", "x-forwarded-for", "x-forwarded-proto"}
    | {"x-forwarded-host"}
)


def _any_case(names: Iterable[str]) -> CIMultiDict[str]:
    """``names`` as keys that match any case of themselves.

    XXX: a CIMultiDict folds the case of a name it is asked about in C,
    and the ``istr`` names of a parsed request carry theirs folded: asking
    it costs much less than lowering each name to look it up in a set.
    """
    return CIMultiDict((name, "") for name in names)


# Every request header not copied upstream as it came, before those the
# ``Connection`` header names; the first also drops Content-Length.
_NOT_COPIED: Final = _any_case(HOP_BY_HOP | _REPLACED_UPSTREAM | {"content-length"})
_NOT_COPIED_KEEPING_LENGTH: Final = _any_case(HOP_BY_HOP | _REPLACED_UPSTREAM)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from ``10.0.0.0/8``-style strings; ValueError names a bad one."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as error:
            message = f"invalid trusted proxy network {spec!r} ({error})"
            raise ValueError(message) from error
    return tuple(networks)


@dataclass(slots=True)
class ForwardingPolicy:
    """How the proxy presents a request upstream.

    ``upstream_host`` is the ``Host`` sent; ``scheme`` is the scheme of the
    proxy's own listener, sent as ``X-Forwarded-Proto`` unless a trusted
    proxy in front already said it; ``forward_cookies`` the cookie names
    allowed to reach Kaltura.
    """

    upstream_host: str
    trusted: tuple[IPNetwork, ...] = ()
    forward_cookies: frozenset[str] = frozenset()
    scheme: str = "http"
    _trust_cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def is_trusted(self, address: str) -> bool:
        known = self._trust_cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            trusted = False
        else:
            trusted = any(ip in network for network in self.trusted)
        if len(self._trust_cache) < 4096:
            self._trust_cache[address] = trusted
        return trusted


def client_address(
    peer: str | None, forwarded_for: str | None, policy: ForwardingPolicy
) -> str | None:
    """The viewer's address: the peer, or the first untrusted hop before it."""
    if peer is None or not forwarded_for or not policy.is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not policy.is_trusted(hop):
            return hop
    return hops[0] if hops else peer


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(token.strip().lower() for token in value.split(","))
    return frozenset(tokens)


def _not_copied(headers: CIMultiDictProxy[str], keep_length: bool) -> CIMultiDict[str]:
    """The names of the request headers not to copy upstream, in any case."""
    dropped = _NOT_COPIED_KEEPING_LENGTH if keep_length else _NOT_COPIED
    if "Connection" in headers:
        # browsers name only keep-alive, which is dropped anyway
        named = [token for token in _connection_tokens(headers) if token not in dropped]
        if named:
            dropped = dropped.copy()
            dropped.extend((token, "") for token in named)
    return dropped


def _allowed_cookies(headers: CIMultiDictProxy[str], allowed: frozenset[str]) -> str:
    kept = []
    for header in headers.getall("Cookie", ()):
        for part in header.split(";"):
            name = part.partition("=")[0].strip()
            if name in allowed:
                kept.append(part.strip())
    return "; ".join(kept)


def upstream_headers(
    headers: CIMultiDictProxy[str],
    peer: str | None,
    policy: ForwardingPolicy,
    *,
    keep_length: bool,
) -> list[tuple[str, str]]:
    """The request headers to send upstream, in the client's order and case.

    ``keep_length`` keeps the client's ``Content-Length`` (for a body that
    streams through as it came); without it the sender computes its own.
    """
    dropped = _not_copied(headers, keep_length)
    out: list[tuple[str, str]] = [("Host", policy.upstream_host)]
    out += [(name, value) for name, value in headers.items() if name not in dropped]

    if policy.forward_cookies:
        cookies = _allowed_cookies(headers, policy.forward_cookies)
        if cookies:
            out.append(("Cookie", cookies))

    # forwarding headers: believe those of a trusted peer only
    trusted_peer = peer is not None and policy.is_trusted(peer)
    earlier = ", ".join(headers.getall("X-Forwarded-For", ()))
    hops = f"{earlier}, {peer}" if earlier else peer
    if hops:
        out.append(("X-Forwarded-For", hops))
    proto = headers.get("X-Forwarded-Proto") if trusted_peer else None
    out.append(("X-Forwarded-Proto", proto or policy.scheme))
    host = headers.get("X-Forwarded-Host") if trusted_peer else None
    host = host or headers.get("Host")
    if host:
        out.append(("X-Forwarded-Host", host))
    return out


def response_headers(
    headers: Iterable[tuple[str, str]], *, keep_length: bool
) -> CIMultiDict[str]:
    """The upstream's response headers for the player, repeats kept.

    ``keep_length`` keeps ``Content-Length`` for a body relayed as it
    came; a body the proxy holds whole gets its length from the server.
    """
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(","))

    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        if lower == "content-length" and not keep_length:
            continue
        out.add(name, value)
    return out
