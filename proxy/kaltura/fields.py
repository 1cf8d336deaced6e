"""The three report fields, their names on the wire, and what makes a value valid.

Kaltura's End-User Level Reports need userId, applicationName and
playbackContext on every player event. The legacy ``stats.collect`` API and
KAVA's ``analytics.trackEvent`` carry them under different names:

=================  ========================  ====================
report field       ``stats.collect``         ``analytics.trackEvent``
=================  ========================  ====================
userId             ``event:userId``          ``userId``
applicationName    ``event:applicationId``   ``application``
playbackContext    ``event:contextId``       ``playbackContext``
=================  ========================  ====================

Serves step 3 (resolve) and step 4 (apply): a value only reaches an event
after :func:`sanitise_value` accepted it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class Field(StrEnum):
    """A report field, named as the reports and the rules files name it."""

    USER_ID = "userId"
    APPLICATION_NAME = "applicationName"
    PLAYBACK_CONTEXT = "playbackContext"


class Api(StrEnum):
    """The two statistics protocols a player may speak."""

    STATS = "stats"
    KAVA = "kava"


FIELDS: Final = (Field.USER_ID, Field.APPLICATION_NAME, Field.PLAYBACK_CONTEXT)

# The event attribute that carries each field, per protocol.
WIRE_NAMES: Final[dict[Api, dict[Field, str]]] = {
    Api.STATS: {
        Field.USER_ID: "userId",
        Field.APPLICATION_NAME: "applicationId",
        Field.PLAYBACK_CONTEXT: "contextId",
    },
    Api.KAVA: {
        Field.USER_ID: "userId",
        Field.APPLICATION_NAME: "application",
        Field.PLAYBACK_CONTEXT: "playbackContext",
    },
}

MAX_USER_ID: Final = 100
MAX_APPLICATION_NAME: Final = 64

# Category ids are positive integers; Kaltura stores them as signed 32-bit.
MAX_CATEGORY_ID: Final = 2**31 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_utf8(value: str) -> bool:
    """False for text holding undecodable bytes (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sanitise_category_id(value: str) -> str | None:
    # ASCII digits hold no control characters and are valid UTF-8
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return str(number) if 0 < number <= MAX_CATEGORY_ID else None


# The longest value of each field that holds text; the other field,
# playbackContext, holds a category id.
_TEXT_LIMITS: Final = {
    Field.USER_ID: MAX_USER_ID,
    Field.APPLICATION_NAME: MAX_APPLICATION_NAME,
}


def sanitise_value(field: Field, value: str) -> str | None:
    """Return ``value`` ready for ``field``, or None when it is not valid.

    Surrounding white space is removed first. A userId is at most 100
    characters, an applicationName at most 64, neither may hold control
    characters or bytes that are not UTF-8, and a playbackContext is a
    positive integer category id.
    """
    value = value.strip()
    limit = _TEXT_LIMITS.get(field)
    if limit is None:
        return _sanitise_category_id(value)
    if not value or len(value) > limit:
        return None

    if value.isascii():
        # XXX: for ASCII text the C isprintable() rejects exactly the
        # control characters of _CONTROL (0x00 to 0x1f and 0x7f), and all
        # of it is valid UTF-8; it costs a fraction of the regex search.
        clean = value.isprintable()
    else:
        clean = not _CONTROL.search(value) and _is_utf8(value)
    return value if clean else None
