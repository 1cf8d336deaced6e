"""What makes a report value valid, checked against the rules as first written."""

from __future__ import annotations

import random
import re

import pytest

from proxy.kaltura.fields import FIELDS, Field, sanitise_value

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def reference_sanitise(field: Field, value: str) -> str | None:
    """sanitise_value as specified: a regex for control characters, then limits."""
    value = value.strip()
    if not value or _CONTROL.search(value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if field is Field.PLAYBACK_CONTEXT:
        if not value.isascii() or not value.isdigit():
            return None
        number = int(value)
        return str(number) if 0 < number <= 2**31 - 1 else None
    limit = 100 if field is Field.USER_ID else 64
    return value if len(value) <= limit else None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (Field.USER_ID, " dana@example.edu ", "dana@example.edu"),
        (Field.USER_ID, "a" * 100, "a" * 100),
        (Field.USER_ID, "a" * 101, None),
        (Field.USER_ID, "tab\there", None),
        (Field.USER_ID, "del\x7f", None),
        (Field.USER_ID, "c1\x85control", None),
        (Field.USER_ID, "zoë", "zoë"),
        (Field.USER_ID, "lone\ud800", None),
        (Field.APPLICATION_NAME, "a" * 65, None),
        (Field.APPLICATION_NAME, "Media Space", "Media Space"),
        (Field.PLAYBACK_CONTEXT, " 0042 ", "42"),
        (Field.PLAYBACK_CONTEXT, "0", None),
        (Field.PLAYBACK_CONTEXT, str(2**31), None),
        (Field.PLAYBACK_CONTEXT, "٤٢", None),
        (Field.PLAYBACK_CONTEXT, "", None),
    ],
)
def test_sanitise_value(field: Field, value: str, expected: str | None) -> None:
    assert expected == sanitise_value(field, value)


def test_every_character_below_0xa0_is_judged_as_the_regex_does() -> None:
    for code in range(0xA0):
        for field in FIELDS:
            value = f"a{chr(code)}1"
            assert reference_sanitise(field, value) == sanitise_value(field, value)


def test_random_values_are_judged_as_the_reference_does() -> None:
    rng = random.Random(1)
    pieces = ["a", "7", "0", " ", "\t", "\x00", "\x7f", "\x9f", "é", "\ud800", "٣"]
    for _ in range(20_000):
        value = "".join(rng.choices(pieces, k=rng.randint(0, 8)))
        for field in FIELDS:
            assert reference_sanitise(field, value) == sanitise_value(field, value)
