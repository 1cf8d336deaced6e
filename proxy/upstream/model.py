"""What the event pool is given and gives back: origin, limits, answers, errors."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

UpstreamErrorReason = Literal[
    "connect",
    "timeout",
    "reset",
    "protocol",
    "too_large",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.-]+")

_SETTING_MINIMUMS: Final = (
    ("max_connections", 1),
    ("max_idle", 0),
    ("max_response_bytes", 0),
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


# XXX: a frozen dataclass's __init__ stores each field through
# object.__setattr__, some 6,000 instructions per answer; the slot
# descriptors store the same fields in a third of that. build_response must
# set every field of UpstreamResponse (a test holds it to that).
_RESPONSE_FIELDS: Final = (
    UpstreamResponse.__dict__["status"].__set__,
    UpstreamResponse.__dict__["reason"].__set__,
    UpstreamResponse.__dict__["headers"].__set__,
    UpstreamResponse.__dict__["body"].__set__,
)


def build_response(
    status: int, reason: str, headers: tuple[tuple[str, str], ...], body: bytes
) -> UpstreamResponse:
    response: UpstreamResponse = object.__new__(UpstreamResponse)
    set_status, set_reason, set_headers, set_body = _RESPONSE_FIELDS
    set_status(response, status)
    set_reason(response, reason)
    set_headers(response, headers)
    set_body(response, body)
    return response
