"""Query strings and form bodies that can be edited without re-encoding them.

A player's query string is kept as the list of its raw ``key=value``
segments. Reading decodes a value once, the way PHP fills ``$_GET``;
writing replaces the raw text of one key or appends a new segment, so
every other byte of the request reaches Kaltura exactly as the player
wrote it (SPEC section 3, point 5).

Serves step 1 (recognise) and step 4 (apply).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote, unquote, unquote_plus

# What JavaScript's encodeURIComponent leaves alone; mwEmbed and the
# Kaltura clients encode values with it or its equivalent.
_COMPONENT_SAFE = "-_.!~*'()"


def encode_component(value: str) -> str:
    """Percent-encode ``value`` as encodeURIComponent does."""
    return quote(value, safe=_COMPONENT_SAFE)


def decode_component(raw: str) -> str:
    """Decode one level of ``application/x-www-form-urlencoded`` text."""
    if "%" not in raw and "+" not in raw:
        return raw
    return unquote_plus(raw, errors="replace")


def decode_uri_component(raw: str) -> str:
    """Decode one level as decodeURIComponent does (``+`` stays ``+``)."""
    if "%" not in raw:
        return raw
    return unquote(raw, errors="replace")


class QueryParams:
    """The parameters of one query string or form body, editable in place.

    Keys are compared after one level of decoding, so ``event:userId`` and
    ``event%3AuserId`` are the same key. When a key occurs more than once
    the last occurrence is the value, as in PHP.
    """

    __slots__ = ("_changed", "_index", "_raw", "_segments")

    def __init__(self, raw: str) -> None:
        self._raw = raw
        self._changed = False

        # each segment is [raw key, raw value or None when there is no "="]
        self._segments: list[list[str | None]] = []
        self._index: dict[str, list[int]] = {}
        if not raw:
            return
        for position, segment in enumerate(raw.split("&")):
            key, equals, value = segment.partition("=")
            self._segments.append([key, value if equals else None])
            if key:
                self._index.setdefault(decode_component(key), []).append(position)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        """The decoded keys, in the order of their first occurrence."""
        return iter(self._index)

    def raw_keys(self, key: str) -> list[str]:
        """How ``key`` was written on the wire, once per occurrence."""
        return [str(self._segments[i][0]) for i in self._index.get(key, ())]

    def raw(self, key: str) -> str | None:
        """The raw, still encoded value of ``key``."""
        positions = self._index.get(key)
        if not positions:
            return None
        return self._segments[positions[-1]][1] or ""

    def get(self, key: str) -> str | None:
        """The value of ``key`` decoded once, or None when it is absent."""
        raw = self.raw(key)
        return None if raw is None else decode_component(raw)

    def set_raw(self, key: str, raw_value: str, *, raw_key: str) -> None:
        """Give ``key`` the already encoded ``raw_value``.

        Every occurrence of the key is rewritten in place; a key that is
        absent is appended as ``raw_key=raw_value``.
        """
        self._changed = True
        positions = self._index.get(key)
        if positions:
            for position in positions:
                self._segments[position][1] = raw_value
            return

        # reuse the empty segment a trailing "&" leaves
        if self._segments and self._segments[-1] == ["", None]:
            self._segments.pop()
        self._index[key] = [len(self._segments)]
        self._segments.append([raw_key, raw_value])

    @property
    def changed(self) -> bool:
        return self._changed

    def render(self) -> str:
        """The query string, byte for byte as received unless it was edited."""
        if not self._changed:
            return self._raw
        return "&".join(
            str(key) if value is None else f"{key}={value}"
            for key, value in self._segments
        )
