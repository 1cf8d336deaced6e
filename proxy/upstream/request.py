"""Writing one request for the event pool, refusing what is unsafe to write.

The method, the target and each header are written verbatim, in order;
the framing (Content-Length; never Transfer-Encoding or Connection) is
the pool's own. Anything that would change the request's meaning on the
wire is refused with ValueError: a method or header name that is not a
token, a target with spaces or control bytes, a header value with CR, LF
or NUL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

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


def encode_request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    host_line: str,
) -> bytes:
    """The request as bytes on the wire; ValueError if it cannot be written.

    ``host_line`` (``Host: ...\\r\\n``) is written first when ``headers``
    have no Host.
    """
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
        lines.insert(0, host_line)
    if body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}\r\n")
    text = "".join(lines)
    try:
        block = text.encode()
    except UnicodeEncodeError:
        block = text.encode("utf-8", "surrogateescape")
    return b"".join((method.encode(), b" ", raw_target, _HTTP11, block, _CRLF, body))


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
