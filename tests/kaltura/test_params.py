"""Percent-encoding and query parsing: the fast paths agree with urllib.

The encoders and decoders of :mod:`proxy.kaltura.params` take shortcuts
for ASCII text, remember recent decodings, and read plain query strings
through orjson. Each is checked here against the plain implementation it
replaces, on hand-picked cases and on many random texts built from the
pieces that reach each path.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from urllib.parse import quote, unquote, unquote_plus

import pytest

from proxy.kaltura.params import (
    QueryParams,
    decode_component,
    decode_uri_component,
    encode_component,
)

# Safe and unsafe ASCII, separators, JSON's special characters, non-ASCII
# text, a lone surrogate, and escapes: valid, invalid, cut short, of bytes
# from 0x80 up, of a backslash and of a percent sign.
PIECES = [
    *"aZ09-_.!~*'() @:/?#&=+%",
    '"',
    "\\",
    "\\x41",
    "\x00",
    "\x1f",
    "\x7f",
    "é",
    "€",
    "\ud800",
    "%41",
    "%4a",
    "%4A",
    "%7F",
    "%80",
    "%e9",
    "%C3%A9",
    "%25",
    "%5C",
    "%5Cx41",
    "%3A",
    "%3a",
    "%2",
    "%zz",
]


def random_texts(count: int, *, seed: int, longest: int = 12) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        yield "".join(rng.choices(PIECES, k=rng.randint(0, longest)))


def reference_quote(text: str) -> str:
    return quote(text, safe="-_.!~*'()")


def test_encode_component_matches_urllib() -> None:
    for text in random_texts(10_000, seed=1):
        try:
            expected = reference_quote(text)
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                encode_component(text)
            continue
        assert expected == encode_component(text), text


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("abc123", "abc123"),
        ("", ""),
        ("a@b.edu", "a%40b.edu"),
        ("Media Space", "Media%20Space"),
        ("-_.!~*'()", "-_.!~*'()"),
        ("é", "%C3%A9"),
    ],
)
def test_encode_component_is_encode_uri_component(text: str, encoded: str) -> None:
    assert encoded == encode_component(text)


def test_decode_component_matches_urllib() -> None:
    for text in random_texts(10_000, seed=2):
        assert unquote_plus(text, errors="replace") == decode_component(text), text


def test_decode_uri_component_matches_urllib() -> None:
    for text in random_texts(10_000, seed=3):
        assert unquote(text, errors="replace") == decode_uri_component(text), text


def test_decoding_the_same_text_again_gives_the_same_result() -> None:
    texts = list(random_texts(500, seed=4))
    first = [decode_component(text) for text in texts]
    assert first == [decode_component(text) for text in texts]


def test_long_texts_are_decoded_as_short_ones() -> None:
    for text in random_texts(300, seed=5, longest=400):
        assert unquote_plus(text, errors="replace") == decode_component(text), text
        assert unquote(text, errors="replace") == decode_uri_component(text), text


def reference_parse(raw: str) -> tuple[list[tuple[str, str]], bool]:
    """The pairs and ``encoded_keys`` of a query, read one segment at a time."""
    values: dict[str, str] = {}
    encoded_keys = False
    for segment in raw.split("&") if raw else ():
        key, _, value = segment.partition("=")
        if "%" in key or "+" in key:
            if "%3A" in key or "%3a" in key:
                encoded_keys = True
            key = unquote_plus(key, errors="replace")
        if key:
            values[key] = value
    return list(values.items()), encoded_keys


def parsed(raw: str) -> tuple[list[tuple[str, str]], bool]:
    params = QueryParams(raw)
    raw_value = params.raw
    return [(key, raw_value(key) or "") for key in params], params.encoded_keys


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a=1",
        "a=1&b=2&a=3",  # the last value wins, in the first one's place
        "a=1&flag&b=",
        "a=b=c&d=e",
        "a=1&&b=2&",
        "=x&a=1",
        'a="quoted"&b=1',
        "a=back\\slash&b=1",
        "a=\x01&b=1",
        "a=\ud800&b=1",
        "a=é€&b=%C3%A9",
        "event%3AuserId=x&event:userId=y",
        "a+b=1&c=2",
        "a={}&b=[1]&c=:,",
    ],
)
def test_query_params_read_every_query_as_a_loop_over_segments(raw: str) -> None:
    assert reference_parse(raw) == parsed(raw)


def random_queries(count: int, *, seed: int) -> Iterator[str]:
    """Mostly ``key=value`` pairs, now and then a segment without or with two."""
    rng = random.Random(seed)
    for _ in range(count):
        segments = []
        for _ in range(rng.randint(0, 6)):
            key = "".join(rng.choices(PIECES[:20], k=rng.randint(0, 4)))
            value = "".join(rng.choices(PIECES, k=rng.randint(0, 4)))
            segments.append(
                rng.choice((f"{key}={value}",) * 8 + (key, f"{key}=={value}"))
            )
        yield "&".join(segments)


def test_query_params_read_random_queries_as_a_loop_over_segments() -> None:
    for raw in random_queries(10_000, seed=6):
        assert reference_parse(raw) == parsed(raw), raw
