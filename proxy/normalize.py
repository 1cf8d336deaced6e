"""GET normalisation: each stats event as the single GET the legacy pipeline reads.

The legacy reports pipeline reads only request lines with top-level
``event:*`` keys (PROTOCOL.md 1.5): an event sent in a POST body (the API
clients; mwEmbed past 2000 characters) or inside a multirequest is never
credited. With ``--normalize get`` the proxy forwards every such
``stats.collect`` as its own::

    GET /api_v3/index.php?service=stats&action=collect&format=..&ks=..&event:...

with the event's attributes (single-encoded, as the API clients write
them), its KS and client tag. The other calls of a multirequest go on
together as a multirequest, renumbered from 1, in the shape they came in
(query, form or JSON). The player's answer is put back together in its
own order (:func:`merge_results`).

Requests are sent as they came, and counted, when normalising would
change their meaning or fail: a GET line over the limit (8 KiB by
default), a multirequest whose calls refer to each other's results
(``{1:result:...}``), or a multirequest answer format other than JSON
(``format=1``) and XML (``2``, the default), whose results the proxy
could not put back together faithfully.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from xml.etree import ElementTree

import orjson

from proxy.kaltura.events import EventView
from proxy.kaltura.params import encode_component
from proxy.kaltura.recognise import BodyKind, Recognised, RequestKind

DEFAULT_MAX_LINE: Final = 8192
_CALL: Final = re.compile(r"(\d+):(.*)")
_BACK_REFERENCE: Final = re.compile(r"\{\d+:result")
_GET_PATH: Final = "/api_v3/index.php"


@dataclass(frozen=True, slots=True)
class EventGet:
    """One event, as the GET that carries it; ``call`` its multirequest number."""

    call: int | None
    target: str


@dataclass(frozen=True, slots=True)
class OtherCalls:
    """A multirequest's other calls, as a multirequest of their own."""

    numbers: tuple[int, ...]  # their numbers in the original request
    method: str
    target: str
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Normalised:
    """How one request goes upstream once normalised."""

    gets: tuple[EventGet, ...]
    others: OtherCalls | None
    calls: int  # the original multirequest's calls; 0 for a single call
    fmt: str = "1"  # the answer format of a multirequest: "1" JSON, "2" XML


def event_get(event: EventView, fmt: str, callback: str | None) -> str:
    """The GET target carrying ``event`` with its KS and client tag."""
    params: list[tuple[str, str]] = [
        ("service", "stats"),
        ("action", "collect"),
        ("format", fmt),
    ]
    if callback is not None:
        params.append(("callback", callback))
    for name in ("ks", "clientTag"):
        value = event.param(name)
        if value:
            params.append((name, value))
    params += [(f"event:{name}", value) for name, value in event.attributes()]
    query = "&".join(f"{key}={encode_component(value)}" for key, value in params)
    return f"{_GET_PATH}?{query}"


def normalise(
    recognised: Recognised, method: str, *, max_line: int
) -> Normalised | str:
    """The request, normalised; or why it goes as it came (a metric label).

    ``not_needed`` is the usual answer: a GET ``stats.collect`` already is
    what the pipeline reads, and other requests carry no stats event.
    """
    if recognised.kind is RequestKind.STATS:
        if method == "GET" and recognised.body_kind is BodyKind.NONE:
            return "not_needed"
        fmt = recognised.param("format") or "2"
        callback = recognised.query.get("callback") if fmt == "9" else None
        target = event_get(recognised.events[0], fmt, callback)
        if len(target) + 16 > max_line:
            return "line_too_long"
        return Normalised((EventGet(None, target),), None, 0)

    if recognised.kind is not RequestKind.MULTIREQUEST or not recognised.events:
        return "not_needed"
    fmt = recognised.param("format") or "2"
    if fmt not in ("1", "2"):
        return "format"
    calls = _calls(recognised)
    if calls is None:
        return "back_reference"

    gets = []
    for event in recognised.events:
        target = event_get(event, fmt, None)
        if len(target) + 16 > max_line:
            return "line_too_long"
        gets.append(EventGet(event.index, target))
    event_calls = {event.index for event in recognised.events}
    others = _other_calls(recognised, calls, event_calls, method, fmt)
    return Normalised(tuple(gets), others, len(calls), fmt)


def _calls(recognised: Recognised) -> dict[int, Any] | None:
    """The multirequest's calls by number (query, form or JSON), or None
    when one refers to another's result."""
    calls: dict[int, Any] = {}
    if recognised.json is not None:
        for key, value in recognised.json.data.items():
            if key.isdigit() and isinstance(value, dict):
                calls[int(key)] = value
        text = orjson.dumps(recognised.json.data).decode()
        return None if _BACK_REFERENCE.search(text) else calls
    for params in (recognised.query, recognised.form):
        if params is None:
            continue
        for key in params:
            match = _CALL.fullmatch(key)
            if match:
                calls.setdefault(int(match[1]), []).append((match[2], params.raw(key)))
                if _BACK_REFERENCE.search(params.get(key) or ""):
                    return None
    return calls


def _other_calls(
    recognised: Recognised,
    calls: dict[int, Any],
    events: set[int | None],
    method: str,
    fmt: str,
) -> OtherCalls | None:
    numbers = tuple(n for n in sorted(calls) if n not in events)
    if not numbers:
        return None
    first = min(calls)  # clients number from 0 (the Python client) or 1
    path = recognised.path
    if recognised.json is not None:
        top = {k: v for k, v in recognised.json.data.items() if not k.isdigit()}
        document = {
            **top,
            **{str(i): calls[n] for i, n in enumerate(numbers, first)},
        }
        query = recognised.query.render() if recognised.has_query else ""
        target = f"{path}?{query}" if query else path
        return OtherCalls(
            numbers, method, target, "application/json", orjson.dumps(document)
        )

    # query or form: the shared parameters, then the calls renumbered
    source = recognised.form if recognised.form is not None else recognised.query
    shared = [
        f"{encode_component(k)}={source.raw(k)}"
        for k in source
        if not _CALL.fullmatch(k) and k != "format"
    ]
    renumbered = [
        f"{i}:{encode_component(name)}={raw}"
        for i, n in enumerate(numbers, first)
        for name, raw in calls[n]
    ]
    text = "&".join([f"format={fmt}", *shared, *renumbered])
    if recognised.form is not None:
        target = recognised.render_target()
        return OtherCalls(
            numbers, method, target, "application/x-www-form-urlencoded", text.encode()
        )
    return OtherCalls(numbers, "GET", f"{path}?{text}", None, b"")


def merge_results(
    normalised: Normalised, event_answers: list[bytes], other_answer: bytes | None
) -> bytes:
    """The multirequest's answer, its results in the original order.

    ``event_answers`` are the bodies of the GETs' answers, ``other_answer``
    that of the other calls' multirequest, all in the client's format.
    """
    if normalised.fmt == "2":
        events = [_xml_result(body) for body in event_answers]
        others = _xml_items(other_answer) if other_answer is not None else []
    else:
        events = [result_of(body) for body in event_answers]
        parsed = result_of(other_answer) if other_answer is not None else []
        others = parsed if isinstance(parsed, list) else [parsed]

    by_number: dict[int, Any] = {}
    for get, result in zip(normalised.gets, events, strict=True):
        if get.call is not None:
            by_number[get.call] = result
    if normalised.others is not None:
        for number, result in zip(normalised.others.numbers, others, strict=False):
            by_number[number] = result
    # a call the answers left out gets an error in its place, never a shift
    numbers = {g.call for g in normalised.gets if g.call is not None}
    if normalised.others is not None:
        numbers.update(normalised.others.numbers)
    missing = _XML_ERROR if normalised.fmt == "2" else _JSON_ERROR
    ordered = [by_number.get(n, missing) for n in sorted(numbers)]
    if normalised.fmt == "2":
        return (_XML_HEAD + "".join(ordered) + _XML_TAIL).encode()
    return orjson.dumps(ordered)


_XML_HEAD: Final = '<?xml version="1.0" encoding="utf-8"?><xml><result>'
_XML_TAIL: Final = "</result><executionTime>0</executionTime></xml>"
_XML_ERROR: Final = (
    "<item><error><objectType>KalturaAPIException</objectType>"
    "<code>INTERNAL_SERVER_ERROR</code><message>the answer was not XML</message>"
    "</error></item>"
)


def _xml_result(body: bytes) -> str:
    """One call's XML answer as a multirequest ``<item>``."""
    try:
        result = ElementTree.fromstring(body).find("result")
    except ElementTree.ParseError:
        return _XML_ERROR
    if result is None:
        return _XML_ERROR
    result.tag = "item"
    result.tail = None
    return ElementTree.tostring(result, encoding="unicode")


def _xml_items(body: bytes) -> list[str]:
    """The ``<item>`` results of a multirequest's XML answer."""
    try:
        result = ElementTree.fromstring(body).find("result")
    except ElementTree.ParseError:
        return []
    items = [] if result is None else list(result)
    for item in items:
        item.tail = None
    return [ElementTree.tostring(item, encoding="unicode") for item in items]


_JSON_ERROR: Final = {
    "code": "INTERNAL_SERVER_ERROR",
    "message": "no answer for this call",
    "objectType": "KalturaAPIException",
    "args": {},
}


def result_of(body: bytes) -> Any:
    """One call's JSON answer, parsed; an unreadable one as an exception object."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {
            "code": "INTERNAL_SERVER_ERROR",
            "message": "the answer was not JSON",
            "objectType": "KalturaAPIException",
            "args": {},
        }
