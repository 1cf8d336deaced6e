"""Kaltura's answer to an event, given by the proxy while the event is spooled.

Players never retry, and some stop reporting after an error: while
Kaltura cannot take an event, the proxy keeps it (:mod:`proxy.spool`) and
gives the player the answer Kaltura gives to an accepted one
(PROTOCOL.md 1.4, 2.2 and 5.1):

- ``stats.collect``: ``true``: JSON for ``format=1``, JSONP
  ``callback(true);`` for ``format=9`` (the callback from the query, as
  Kaltura takes it), else XML ``<xml><result>1</result>...</xml>``;
- a multirequest whose every call is a ``stats.collect``: the list of
  their results, one ``true`` each, in the same formats;
- KAVA's ``analytics.trackEvent``: ``{"time": <now>, "viewEventsEnabled":
  true}``.

Any other request (a multirequest with another call in it, a JSONP call
with a callback Kaltura would refuse) has no answer the proxy can give
for Kaltura: :func:`accepted_answer` returns None, and such a request is
not spooled.
"""

from __future__ import annotations

import re
import time
from typing import Final

import orjson
from multidict import CIMultiDict

from proxy.kaltura.events import JsonDocument
from proxy.kaltura.recognise import Recognised, RequestKind

_CALLBACK: Final = re.compile(r"[0-9_a-zA-Z.]*")
_SUB_REQUEST: Final = re.compile(r"(\d+):service")
_XML_HEAD: Final = '<?xml version="1.0" encoding="utf-8"?><xml><result>'
_XML_TAIL: Final = "</result><executionTime>0</executionTime></xml>"


def _sub_requests(recognised: Recognised) -> int:
    """How many calls a multirequest holds, counted by their ``N:service``."""
    keys: set[str] = set()
    for params in (recognised.query, recognised.form):
        if params is not None:
            keys.update(m[1] for k in params if (m := _SUB_REQUEST.fullmatch(k)))
    if recognised.json is not None:
        keys.update(_json_calls(recognised.json))
    return len(keys)


def _json_calls(document: JsonDocument) -> set[str]:
    return {
        key
        for key, value in document.data.items()
        if key.isdigit() and isinstance(value, dict) and "service" in value
    }


def accepted_answer(
    recognised: Recognised,
) -> tuple[int, CIMultiDict[str], bytes] | None:
    """Status, headers and body of Kaltura's answer to this accepted request.

    None when the proxy cannot answer for Kaltura (see the module's text).
    """
    headers: CIMultiDict[str] = CIMultiDict({"Access-Control-Allow-Origin": "*"})
    if recognised.kind is RequestKind.KAVA:
        headers["Content-Type"] = "application/json"
        body = orjson.dumps({"time": int(time.time()), "viewEventsEnabled": True})
        return 200, headers, body

    # a list of results for a multirequest of events only, else one result
    results: list[bool] | bool = True
    if recognised.kind is RequestKind.MULTIREQUEST:
        calls = _sub_requests(recognised)
        if calls == 0 or calls != len(recognised.events):
            return None
        results = [True] * calls
    elif recognised.kind is not RequestKind.STATS:
        return None

    fmt = recognised.param("format") or "2"
    if fmt == "1":
        headers["Content-Type"] = "application/json"
        return 200, headers, orjson.dumps(results)
    if fmt == "9":
        callback = recognised.query.get("callback")
        if callback is None or not _CALLBACK.fullmatch(callback):
            return None  # Kaltura would refuse it: nothing to pretend
        headers["Content-Type"] = "application/javascript"
        text = f"{callback}({orjson.dumps(results).decode()});"
        return 200, headers, text.encode()

    if isinstance(results, list):
        inner = "".join("<item>1</item>" for _ in results)
    else:
        inner = "1"
    headers["Content-Type"] = "text/xml"
    return 200, headers, f"{_XML_HEAD}{inner}{_XML_TAIL}".encode()
