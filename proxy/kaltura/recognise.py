"""Step 1, recognise: tell a player event from any other request.

Kaltura's API accepts one call in many shapes (PROTOCOL.md 1.1, 2.1, 5.1):

- the query form ``/api_v3/index.php?service=stats&action=collect&...``;
- the path forms ``/api_v3/index.php/service/stats/action/collect`` and
  ``/api_v3/service/stats/action/collect``, and KDP3's ``//api_v3/...``;
- parameters in the query, a form body or a JSON body, the URL winning;
- ``event:`` keys written literally or as ``event%3A``;
- ``multirequest`` with ``N:service``/``N:action`` sub-requests, as
  parameters or as a JSON object with numeric keys;
- KAVA ``service=analytics&action=trackEvent``, flat in the query (GET) or
  with four fields in the query and the rest in a JSON body (POST).

:func:`recognise` turns a request into a :class:`Recognised`: its kind and
an :class:`~proxy.kaltura.events.EventView` per statistics event. Anything
it cannot read (a malformed body, invalid UTF-8) leaves the request with no
events, to be forwarded as it came for Kaltura to judge.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import orjson

from proxy.kaltura.events import EventView, JsonDocument, JsonStore, ParamStore, Store
from proxy.kaltura.fields import Api
from proxy.kaltura.params import QueryParams, decode_component

_API_PREFIX: Final = "api_v3/"


class RequestKind(StrEnum):
    """What a request is, as the ``kind`` label of the metrics names it."""

    STATS = "stats"
    MULTIREQUEST = "multirequest"
    KAVA = "kava"
    OTHER = "other"


class BodyKind(StrEnum):
    NONE = "none"
    FORM = "form"
    JSON = "json"
    OPAQUE = "opaque"


@dataclass(slots=True)
class Recognised:
    """A request taken apart: its kind, its events and what can be rewritten."""

    kind: RequestKind
    path: str
    query: QueryParams
    has_query: bool
    body_kind: BodyKind = BodyKind.NONE
    form: QueryParams | None = None
    json: JsonDocument | None = None
    events: list[EventView] = field(default_factory=list)

    def render_target(self) -> str:
        """The request target, rewritten only if a query value changed."""
        if not self.has_query and not self.query.changed:
            return self.path
        return f"{self.path}?{self.query.render()}"

    def render_body(self, original: bytes) -> bytes:
        """The body to send: ``original`` unless an event value was added."""
        if self.form is not None and self.form.changed:
            return self.form.render().encode()
        if self.json is not None and self.json.changed:
            if self.json.exact:
                text = json.dumps(
                    self.json.data, ensure_ascii=False, separators=(",", ":")
                )
                return text.encode("utf-8", "surrogatepass")
            return orjson.dumps(self.json.data)
        return original

    def param(self, name: str) -> str | None:
        """A request-level parameter: the URL's first, then the body's, as
        Kaltura merges them (PROTOCOL.md 1.1); None for a JSON object."""
        value = self.query.get(name)
        if value is None and self.form is not None:
            value = self.form.get(name)
        if value is None and self.json is not None:
            found = self.json.data.get(name)
            value = None if found is None or isinstance(found, dict) else str(found)
        return value

    @property
    def body_changed(self) -> bool:
        form_changed = self.form is not None and self.form.changed
        return form_changed or (self.json is not None and self.json.changed)


def is_api_path(target: str) -> bool:
    """Whether a request target is under ``/api_v3/``, one slash or more."""
    return target.lstrip("/").startswith(_API_PREFIX)


def _path_params(path: str) -> dict[str, str]:
    """The ``/key/value`` pairs after ``/api_v3/[index.php]``."""
    rest = path.lstrip("/")[len(_API_PREFIX) :]
    if rest.startswith("index.php"):
        rest = rest[len("index.php") :]
    if not rest.strip("/"):
        return {}  # the query form: nothing after the script
    parts = [part for part in rest.split("/") if part]
    return {
        decode_component(parts[i]): decode_component(parts[i + 1])
        for i in range(0, len(parts) - 1, 2)
    }


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


# a digit run longer than any 64-bit integer
_LONG_DIGITS: Final = re.compile(rb"\d{19,}")
_ParsedBody = tuple[BodyKind, QueryParams | None, JsonDocument | None]
_NO_BODY: Final[_ParsedBody] = (BodyKind.NONE, None, None)


def _parse_body(content_type: str | None, body: bytes | None) -> _ParsedBody:
    if not body:
        return _NO_BODY

    media_type = _media_type(content_type)
    try:
        if media_type == "application/x-www-form-urlencoded":
            return BodyKind.FORM, QueryParams(body.decode("utf-8")), None
        if media_type == "application/json":
            stripped = body.strip()
            if stripped.startswith(b"{") and stripped.endswith(b"}"):
                # orjson keeps integers to 64 bits; longer digit runs are
                # read (and written back) by the standard library, exactly
                big = _LONG_DIGITS.search(stripped) is not None
                data = json.loads(stripped) if big else orjson.loads(stripped)
                if isinstance(data, dict):
                    return BodyKind.JSON, None, JsonDocument(data, exact=big)
    except (UnicodeDecodeError, ValueError):
        pass  # orjson's and json's decode errors are ValueErrors
    return BodyKind.OPAQUE, None, None


def _lookup(
    name: str,
    path_params: dict[str, str],
    query: QueryParams,
    form: QueryParams | None,
    json: JsonDocument | None,
) -> str:
    """A request-level value, looked up in Kaltura's order of precedence."""
    value = path_params.get(name)
    if value is None:
        value = query.get(name)
    if value is None and form is not None:
        value = form.get(name)
    if value is None and json is not None:
        found = json.data.get(name)
        value = found if isinstance(found, str) else None
    return (value or "").lower()


def _is_double_encoded(params: tuple[QueryParams, ...]) -> bool:
    """Whether the client pre-encodes its report values, as mwEmbed v2 does.

    KDP3 (client tag ``kdp:``) encodes once whatever its referrer holds.
    Otherwise the referrer tells best: once decoded, mwEmbed v2's still
    reads ``https%3A...``. Without a referrer, mwEmbed's ``kwidget`` client
    tag decides.
    """
    kdp = kwidget = False
    for p in params:
        tag = p.get("clientTag") or ""
        kdp = kdp or tag.startswith("kdp")
        kwidget = kwidget or tag.startswith("kwidget")
    if kdp:
        return False
    for p in params:
        referrer = _referrer(p)
        if referrer:
            return referrer[:8].lower().startswith(("http%3a", "https%3a"))
    return kwidget


def _referrer(params: QueryParams) -> str | None:
    """The referrer of an event, or of any sub-request, decoded once."""
    referrer = params.get("event:referrer")
    if referrer is None:
        keys = (key for key in params if key.endswith(":event:referrer"))
        key = next(keys, None)
        referrer = None if key is None else params.get(key)
    return referrer


def _stats_event(
    query: QueryParams,
    form: QueryParams | None,
    json: JsonDocument | None,
    *,
    index: int | None,
) -> EventView:
    prefix = "" if index is None else f"{index}:"
    params = (query,) if form is None else (query, form)
    double = _is_double_encoded(params)

    # XXX: positional arguments: keyword arguments to a class cost a dict
    # per call (Python 3.11)
    event_prefix, param_prefix = prefix + "event:", prefix
    stores: list[Store] = []
    for p in params:
        encoded_keys = p.encoded_keys
        stores.append(ParamStore(p, event_prefix, param_prefix, double, encoded_keys))
    if json is not None:
        container = json.data if index is None else json.data.get(str(index))
        if isinstance(container, dict):
            stores.append(JsonStore(json, container, nested=True))
    return EventView(Api.STATS, tuple(stores), stores[-1], index)


def _kava_event(
    query: QueryParams, form: QueryParams | None, json: JsonDocument | None
) -> EventView:
    stores: list[Store] = [ParamStore(query, event_prefix="")]
    if form is not None:
        stores.append(ParamStore(form, event_prefix=""))
    if json is not None:
        stores.append(JsonStore(json, json.data, nested=False))
    return EventView(Api.KAVA, tuple(stores), stores[-1])


def _sub_request_indices(
    query: QueryParams, form: QueryParams | None, json: JsonDocument | None
) -> list[int]:
    """The indices N of sub-requests that are ``stats.collect`` calls."""
    indices: set[int] = set()
    for params in (query, form):
        if params is None:
            continue
        for key in params:
            number, _, rest = key.partition(":")
            if rest == "service" and number.isascii() and number.isdigit():
                service = (params.get(key) or "").lower()
                action = (params.get(f"{number}:action") or "").lower()
                if service == "stats" and action == "collect":
                    indices.add(int(number))
    if json is not None:
        for key, call in json.data.items():
            if key.isascii() and key.isdigit() and isinstance(call, dict):
                service = str(call.get("service", "")).lower()
                action = str(call.get("action", "")).lower()
                if service == "stats" and action == "collect":
                    indices.add(int(key))
    return sorted(indices)


def recognise(
    method: str, target: str, content_type: str | None, body: bytes | None
) -> Recognised:
    """Take a request apart into its kind and its statistics events.

    ``target`` is the origin-form request target as received; ``body`` is
    None when the body was not read (it streams through untouched).
    """
    path, question_mark, raw_query = target.partition("?")
    query = QueryParams(raw_query)
    has_query = bool(question_mark)
    if not is_api_path(path):
        return Recognised(RequestKind.OTHER, path, query, has_query)

    body_kind, form, json = _parse_body(content_type, body)

    # the call's service and action, from the path, the query, then the body
    path_params = _path_params(path)
    service = _lookup("service", path_params, query, form, json)
    action = _lookup("action", path_params, query, form, json)

    if service == "stats" and action == "collect":
        kind = RequestKind.STATS
        events = [_stats_event(query, form, json, index=None)]
    elif service == "analytics" and action == "trackevent":
        kind = RequestKind.KAVA
        events = [_kava_event(query, form, json)]
    elif service == "multirequest":
        kind = RequestKind.MULTIREQUEST
        indices = _sub_request_indices(query, form, json)
        events = [_stats_event(query, form, json, index=i) for i in indices]
    else:
        kind, events = RequestKind.OTHER, []

    # a body that cannot be read is Kaltura's to judge: it goes as it came
    if body_kind is BodyKind.OPAQUE:
        events = []
    return Recognised(kind, path, query, has_query, body_kind, form, json, events)
