"""Sources: where a rule finds a value.

A source reads one raw value from the request, then refines it in a fixed
order, each step optional:

1. read: ``value`` (a literal), ``page`` (a regex over the page URL),
   ``header``, ``cookie`` or ``query`` (a request parameter), or
   ``ks = "request"`` (the user of the event's own KS);
2. ``pattern``: a regex searched in the raw value; its first group, or the
   whole match when it has none, goes on;
3. ``decode``: ``url`` (one level of percent-decoding), ``base64``,
   ``ks`` (the user inside a KS held in a cookie or header) or ``jwt``
   (a claim of a signed token, :mod:`proxy.rules.tokens`);
4. ``table``: the result mapped through a lookup table; a miss yields
   nothing.

A source that yields nothing lets the next one try. Sources that need the
network implement :class:`Source` with ``needs_network = True`` and do
their work in :meth:`Source.fetch`; the resolver awaits those and calls
:meth:`Source.extract` on the rest, so local sources never cost a
coroutine.

Serves step 3 (resolve).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from proxy.kaltura.params import decode_component
from proxy.rules.context import SourceContext
from proxy.rules.tokens import TokenClaim

Reader = Callable[[SourceContext], str | None]


class Source(Protocol):
    """A way to find one field's value for one event.

    ``kind`` names the source in metrics and logs (``value``, ``page``,
    ``header``, ``cookie``, ``query``, ``ks``, ...). ``extract`` is called
    when ``needs_network`` is false and must not block; otherwise ``fetch``
    is awaited. Both return None when the source has nothing.
    """

    @property
    def kind(self) -> str: ...

    @property
    def needs_network(self) -> bool: ...

    def extract(self, context: SourceContext) -> str | None: ...

    async def fetch(self, context: SourceContext) -> str | None: ...


class Decoding(StrEnum):
    URL = "url"
    BASE64 = "base64"
    KS = "ks"
    JWT = "jwt"


def _decode_base64(text: str) -> str | None:
    text = text.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def decode_value(decoding: Decoding, text: str, context: SourceContext) -> str | None:
    """Apply one ``decode`` step; None when the text does not decode."""
    if decoding is Decoding.URL:
        return decode_component(text)
    if decoding is Decoding.BASE64:
        return _decode_base64(text)
    if decoding is Decoding.KS:
        return context.ks_user(text)
    return None  # a token needs its section: LocalSource.token


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A source answered from the request alone (steps 1 to 4 above)."""

    kind: str
    read: Reader
    pattern: re.Pattern[str] | None = None
    decode: Decoding | None = None
    table: Mapping[str, str] | None = None
    token: TokenClaim | None = None  # for decode = "jwt"

    # XXX: a class attribute, not a property: it is read for every source
    # tried, and an attribute costs a fraction of a property call.
    needs_network: ClassVar[bool] = False

    def extract(self, context: SourceContext) -> str | None:
        value = self.read(context)
        if value is None:
            return None

        pattern = self.pattern
        if pattern is not None:
            match = pattern.search(value)
            if match is None:
                return None
            value = match.group(1) if pattern.groups else match.group(0)
            if value is None:
                return None

        decoding = self.decode
        if decoding is not None:
            if decoding is Decoding.JWT:
                token = self.token
                value = None if token is None else token.read(value)
            else:
                value = decode_value(decoding, value, context)
            if value is None:
                return None

        if self.table is not None:
            return self.table.get(value)
        return value

    async def fetch(self, context: SourceContext) -> str | None:
        return self.extract(context)


def read_literal(value: str) -> Reader:
    return lambda context: value


def read_page(context: SourceContext) -> str | None:
    return context.page


def read_header(name: str) -> Reader:
    return lambda context: context.header(name)


def read_cookie(name: str) -> Reader:
    return lambda context: context.cookie(name)


def read_query(name: str) -> Reader:
    return lambda context: context.query(name)


def read_request_ks(context: SourceContext) -> str | None:
    return context.request_ks_user()
