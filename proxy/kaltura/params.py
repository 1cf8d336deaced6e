"""Query strings and form bodies that can be edited without re-encoding them.

A player's query string is kept as the list of its raw ``key=value``
segments. Reading decodes a value once, the way PHP fills ``$_GET``;
writing replaces the raw text of one key or appends a new segment, so
every other byte of the request reaches Kaltura exactly as the player
wrote it (SPEC section 3, point 5).

Serves step 1 (recognise) and step 4 (apply).
"""

from __future__ import annotations

from codecs import unicode_escape_decode
from collections.abc import Iterator
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote

import orjson

# What JavaScript's encodeURIComponent leaves alone; mwEmbed and the
# Kaltura clients encode values with it or its equivalent.
_COMPONENT_SAFE = "-_.!~*'()"

# XXX: str.translate with a full table encodes ASCII text in C, several
# times faster than urllib's quote; other text still goes through quote.
_ASCII_ENCODED: Final = tuple(
    char if char.isalnum() or char in _COMPONENT_SAFE else f"%{ord(char):02X}"
    for char in map(chr, range(128))
)


def encode_component(value: str) -> str:
    """Percent-encode ``value`` as encodeURIComponent does."""
    if value.isascii():
        # letters and digits (most ids and names) have nothing to encode
        return value if value.isalnum() else value.translate(_ASCII_ENCODED)
    return quote(value, safe=_COMPONENT_SAFE)


def _unquote(raw: str) -> str:
    """urllib's ``unquote``, with a fast path for ASCII text and escapes.

    XXX: urllib decodes escapes through bytes in Python code. For ASCII
    text without backslashes, turning each ``%`` into ``\\x`` and running
    the C ``unicode_escape`` codec gives the same result several times
    faster, provided every escape was valid (else the codec raises) and
    stood for an ASCII character (else the result is not ASCII: escapes
    from 0x80 up are UTF-8 bytes, which only urllib decodes right).
    """
    if raw.isascii() and "\\" not in raw:
        try:
            decoded: str = unicode_escape_decode(raw.replace("%", "\\x"))[0]
        except UnicodeDecodeError:
            pass
        else:
            if decoded.isascii():
                return decoded
    return unquote(raw, errors="replace")


# XXX: a player sends the same encoded client tag with every event, and
# the same referrer with every event of a page view: remembering the
# decodings of recent short values (a few MB at most) saves most of the
# decoding work.
_RECENT_MAX_LENGTH: Final = 256
_recent_unquote: Final = lru_cache(maxsize=2048)(_unquote)


def decode_component(raw: str) -> str:
    """Decode one level of ``application/x-www-form-urlencoded`` text."""
    if "+" in raw:
        raw = raw.replace("+", " ")
    if "%" not in raw:
        return raw
    return _recent_unquote(raw) if len(raw) <= _RECENT_MAX_LENGTH else _unquote(raw)


def decode_uri_component(raw: str) -> str:
    """Decode one level as decodeURIComponent does (``+`` stays ``+``)."""
    if "%" not in raw:
        return raw
    return _recent_unquote(raw) if len(raw) <= _RECENT_MAX_LENGTH else _unquote(raw)


def _plain_pairs(raw: str) -> dict[str, str] | None:
    """The ``key=value`` pairs of ``raw``, last occurrence winning, undecoded.

    None unless every ``&``-separated segment holds exactly one ``=`` and
    the text holds nothing a JSON string cannot (a quote, a backslash, a
    control character, a lone surrogate).

    XXX: such text is a JSON object once each ``&`` becomes ``","`` and
    each ``=`` ``":"``, and orjson reads it in C several times faster than
    a loop over the segments. Any other text breaks the alternation of
    keys and values, or JSON's rules for strings, and orjson refuses it.
    """
    if '"' in raw or "\\" in raw:
        return None
    text = '{"' + raw.replace("&", '","').replace("=", '":"') + '"}'
    try:
        pairs: dict[str, str] = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return pairs


class QueryParams:
    """The parameters of one query string or form body, editable in place.

    Keys are compared after one level of decoding, so ``event:userId`` and
    ``event%3AuserId`` are the same key; ``encoded_keys`` says the client
    writes its keys encoded. When a key occurs more than once the last
    occurrence is the value, as in PHP.

    Reading costs one pass over the text. Edits are kept aside: appended
    segments are added after the untouched text, and only a replaced value
    makes :meth:`render` rebuild the string.
    """

    __slots__ = ("_appended", "_raw", "_replaced", "_values", "encoded_keys")

    def __init__(self, raw: str) -> None:
        self._raw = raw
        self._appended: dict[str, str] = {}  # decoded key -> new segment
        self._replaced: dict[str, str] = {}
        self.encoded_keys = False

        # decoded key -> raw value of its last occurrence
        self._values = self._parse(raw) if raw else {}

    def _parse(self, raw: str) -> dict[str, str]:
        values = _plain_pairs(raw)
        if values is not None:
            # keys needing no decoding, none of them empty: as they came
            keys = "&".join(values)
            if "%" not in keys and "+" not in keys and "" not in values:
                return values
        return self._parse_segments(raw)

    def _parse_segments(self, raw: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for segment in raw.split("&"):
            key, _, value = segment.partition("=")
            if "%" in key or "+" in key:
                # a client that encodes keys writes event%3AuserId
                if "%3A" in key or "%3a" in key:
                    self.encoded_keys = True
                key = decode_component(key)
            if key:
                values[key] = value
        return values

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        """The decoded keys, in the order of their first occurrence."""
        return iter(self._values)

    def raw(self, key: str) -> str | None:
        """The raw, still encoded value of ``key``."""
        return self._values.get(key)

    def get(self, key: str) -> str | None:
        """The value of ``key`` decoded once, or None when it is absent."""
        raw = self._values.get(key)
        return None if raw is None else decode_component(raw)

    def set_raw(self, key: str, raw_value: str, *, raw_key: str) -> None:
        """Give ``key`` the already encoded ``raw_value``.

        Every occurrence of the key is rewritten in place; a key that is
        absent is appended as ``raw_key=raw_value``.
        """
        if key in self._values and key not in self._appended:
            self._replaced[key] = raw_value
        else:
            self._appended[key] = f"{raw_key}={raw_value}"
        self._values[key] = raw_value

    @property
    def changed(self) -> bool:
        return bool(self._appended or self._replaced)

    def render(self) -> str:
        """The query string, byte for byte as received unless it was edited."""
        base = self._raw
        if self._replaced:
            segments = []
            for segment in base.split("&"):
                key = segment.partition("=")[0]
                new = self._replaced.get(decode_component(key))
                segments.append(segment if new is None else f"{key}={new}")
            base = "&".join(segments)
        if not self._appended:
            return base
        separator = "&" if base and not base.endswith("&") else ""
        return base + separator + "&".join(self._appended.values())
