"""What a rule sees of a request: cookies looked up one name at a time."""

from __future__ import annotations

import random

import pytest

from proxy.rules.context import find_cookie


def reference_cookies(header: str) -> dict[str, str]:
    """Every cookie of a header, the first of a repeated name winning."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, equals, value = part.partition("=")
        name = name.strip()
        if equals and name and name not in cookies:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


@pytest.mark.parametrize(
    ("header", "name", "value"),
    [
        ("MoodleSession=abc123; MOODLEID1_=x", "MoodleSession", "abc123"),
        ("a=1; MoodleSession=abc123", "MoodleSession", "abc123"),
        ("s=first; s=second", "s", "first"),
        (' s = "quoted" ', "s", "quoted"),
        ('s="', "s", '"'),
        ("s=a=b", "s", "a=b"),
        ("s=", "s", ""),
        ("x=MoodleSession=1", "MoodleSession", None),
        ("MoodleSessionX=1", "MoodleSession", None),
        ("MoodleSession; MoodleSession=2", "MoodleSession", "2"),
        ("", "s", None),
        ("=1", "", None),
    ],
)
def test_find_cookie(header: str, name: str, value: str | None) -> None:
    assert value == find_cookie(header, name)


def test_find_cookie_agrees_with_parsing_the_whole_header() -> None:
    rng = random.Random(1)
    pieces = ["s", "t", "s", " ", "=", ";", '"', "v", "é", "\t"]
    for _ in range(20_000):
        header = "".join(rng.choices(pieces, k=rng.randint(0, 14)))
        cookies = reference_cookies(header)
        for name in ("s", "t", "s t", ""):
            assert cookies.get(name) == find_cookie(header, name), (header, name)
