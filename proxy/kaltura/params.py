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
        values: dict[str, str] = {}
        if raw:
            for segment in raw.split("&"):
                key, _, value = segment.partition("=")
                if "%" in key or "+" in key:
                    # a client that encodes keys writes event%3AuserId
                    if "%3A" in key or "%3a" in key:
                        self.encoded_keys = True
                    key = decode_component(key)
                if key:
                    values[key] = value
        self._values = values

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
