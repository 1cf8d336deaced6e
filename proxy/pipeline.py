"""A model of how the legacy reports pipeline credits an event to a viewer.

Kaltura's open-source data warehouse (PROTOCOL.md 1.5) reads statistics
events from the web server's access log, so it sees only the request line
of a call:

1. only lines with ``service=stats`` and ``action=collect`` are read, and
   only top-level ``event:<name>`` keys (a multirequest's ``1:event:...``
   and every POST body are never seen);
2. event types 1, 12 and 13 (widget loaded, buffer start and end) are
   skipped;
3. the user comes from the ``ks`` parameter: a KS v1 of the event's own
   partner gives its user, or, when that user is empty or ``0`` (a widget
   KS), the event's ``event:userId``; a KS v2 gives its ``_u`` the same way,
   read with the partner's admin secret; no KS, or a KS of another
   partner, gives "Unknown".

:func:`credit` applies these rules to one request as it leaves the proxy,
so that ``replay`` can say what share of events the reports will credit
to a viewer, before and after the proxy. The model knows only what that
page of PROTOCOL.md says; whether a partner has the end-user reports
feature switched on is not visible in traffic and is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import unquote

from proxy.kaltura.session import KsReader

# the event types the warehouse skips
SKIPPED_TYPES: Final = frozenset({"1", "12", "13"})


class Credit(StrEnum):
    """What the pipeline makes of one call's event."""

    VIEWER = "viewer"  # credited to a viewer
    UNKNOWN = "unknown"  # read, but filed under Unknown
    SKIPPED = "skipped"  # an event type it skips
    UNSEEN = "unseen"  # never reaches it (POST, multirequest, not collect)


@dataclass(frozen=True, slots=True)
class Verdict:
    credit: Credit
    user: str | None = None


def _request_line_params(target: str) -> dict[str, str]:
    """The query's parameters as the warehouse reads them: unescaped once.

    The last occurrence of a key wins, keys compared without case; a
    comma in a value becomes ``~`` (both as PROTOCOL.md 1.5 describes).
    """
    params: dict[str, str] = {}
    for segment in target.partition("?")[2].split("&"):
        key, _, value = segment.partition("=")
        params[unquote(key).lower()] = unquote(value).replace(",", "~")
    return params


def credit(
    method: str, target: str, ks_reader: KsReader, *, widget_ks: bool = False
) -> Verdict:
    """How the legacy pipeline files the event of one request.

    ``widget_ks`` counts a call without a KS as if it had a widget KS of its
    partner: what the proxy attaches when it can (replay fetches none).
    A KS v2 the given secrets do not open counts as Unknown.
    """
    params = _request_line_params(target)
    if (
        method != "GET"
        or params.get("service") != "stats"
        or params.get("action") != "collect"
        or "event:eventtype" not in params
    ):
        return Verdict(Credit.UNSEEN)
    if params["event:eventtype"] in SKIPPED_TYPES:
        return Verdict(Credit.SKIPPED)

    # the user: the KS's when it names one, the event's under a widget KS
    ks = params.get("ks")
    event_user = params.get("event:userid") or None
    if not ks and widget_ks:
        return (
            Verdict(Credit.VIEWER, event_user)
            if event_user
            else Verdict(Credit.UNKNOWN)
        )
    session = ks_reader.session(ks) if ks else None
    partner = params.get("event:partnerid", "")
    if session is None or str(session.partner_id) != partner:
        return Verdict(Credit.UNKNOWN)
    if session.user_id is None and session.version == 2:
        return Verdict(Credit.UNKNOWN)  # a KS v2 the secrets do not open
    user = session.user_id if session.has_user else event_user
    return Verdict(Credit.VIEWER, user) if user else Verdict(Credit.UNKNOWN)
