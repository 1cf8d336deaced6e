"""A stand-in for Kaltura's API, for ``kstats-proxy demo`` and the tests.

It answers the calls the proxy forwards the way ``PROTOCOL.md`` says the
real server does, and records every request it receives:

- parameters come from the path pairs, the query and the body (JSON only
  when ``Content-Type`` is exactly ``application/json``), the URL winning,
  and keys are split on ``:`` into nested objects;
- ``stats.collect`` checks ``eventType`` (1 to 40, else
  ``INVALID_ENUM_VALUE``) and, when a ``ks`` is present, that it is a
  well-formed KS (signed with the partner's secret, when it knows one),
  else ``INVALID_KS``; it returns ``true``;
- ``multirequest`` answers each sub-request in order;
- ``analytics.trackEvent`` answers ``{"time": ..., "viewEventsEnabled": true}``;
- ``session.startWidgetSession`` (``widgetId=_<partnerId>``) answers a
  widget KS: user ``0``, type 0, privileges ``view:*,widget:1``
  (PROTOCOL.md 3.4);
- ``category.list`` (filters ``fullNameEqual``, ``idIn``) and
  ``categoryEntry.list`` (filter ``entryIdEqual``) answer list responses
  from the categories it was given, and need an admin KS (type 2) of the
  partner, signed with its secret when the stand-in knows one;
- answers are in the requested ``format``: 1 JSON, 2 XML (the default),
  9 JSONP with the query's ``callback``.

It is not Kaltura: it keeps no data and knows only these calls.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus

import orjson
from aiohttp import web

from proxy.kaltura.ks import (
    NO_SECRETS,
    SESSION_TYPE_ADMIN,
    AdminSecrets,
    KalturaSession,
    make_ks_v1,
    parse_ks,
)

_CALLBACK: Final = re.compile(r"[0-9_a-zA-Z.]*")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the stand-in received it."""

    method: str
    target: str  # the raw request target, query included
    headers: tuple[tuple[str, str], ...]
    body: bytes
    params: dict[str, Any]  # merged and nested, as the server sees them

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _nest(flat: list[tuple[str, Any]]) -> dict[str, Any]:
    """``a:b=1`` pairs into ``{"a": {"b": 1}}``, later keys winning."""
    tree: dict[str, Any] = {}
    for key, value in flat:
        node = tree
        parts = key.split(":")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def request_params(
    path: str, query: str, content_type: str, body: bytes
) -> dict[str, Any]:
    """The parameters of a call as Kaltura's server reads them."""
    body_params: dict[str, Any] = {}
    if content_type.lower() == "application/json":
        stripped = body.strip()
        if stripped.startswith(b"{") and stripped.endswith(b"}"):
            try:
                loaded = orjson.loads(stripped)
                body_params = loaded if isinstance(loaded, dict) else {}
            except orjson.JSONDecodeError:
                body_params = {}
    elif content_type.lower().startswith("application/x-www-form-urlencoded"):
        text = body.decode("utf-8", "replace")
        body_params = _nest(parse_qsl(text, keep_blank_values=True))

    url_params = _nest(parse_qsl(query, keep_blank_values=True))
    rest = path.lstrip("/").removeprefix("api_v3/").removeprefix("index.php")
    parts = [unquote_plus(p) for p in rest.split("/") if p]
    path_params = dict(zip(parts[::2], parts[1::2], strict=False))
    return _merge(_merge(body_params, url_params), path_params)


@dataclass
class StandIn:
    """The stand-in's state: what it received, and what it knows."""

    secrets: AdminSecrets = NO_SECRETS  # checks player KSes when given
    received: list[RecordedRequest] = field(default_factory=list)
    # checks admin KSes; the player secrets when not given
    admin_secrets: AdminSecrets = NO_SECRETS
    # category id -> full name, and entry id -> the ids of its categories
    categories: dict[int, str] = field(default_factory=dict)
    entry_categories: dict[str, list[int]] = field(default_factory=dict)

    def call(self, params: dict[str, Any]) -> Any:
        service = str(params.get("service", "")).lower()
        action = str(params.get("action", "")).lower()
        if service == "stats" and action == "collect":
            return self._collect(params)
        if service == "analytics" and action == "trackevent":
            return {"time": int(time.time()), "viewEventsEnabled": True}
        if service == "session" and action == "startwidgetsession":
            return self._widget_session(params)
        if service == "category" and action == "list":
            return self._list_categories(params)
        if service == "categoryentry" and action == "list":
            return self._list_category_entries(params)
        raise ApiError(
            "SERVICE_FORBIDDEN", f"the stand-in does not serve {service}.{action}"
        )

    def calls(self, service: str, action: str) -> list[RecordedRequest]:
        """The requests received for one call, in order."""
        return [
            r
            for r in self.received
            if str(r.params.get("service", "")).lower() == service.lower()
            and str(r.params.get("action", "")).lower() == action.lower()
        ]

    def _widget_session(self, params: dict[str, Any]) -> dict[str, Any]:
        widget = str(params.get("widgetId", ""))
        if not widget.startswith("_") or not widget[1:].isdigit():
            raise ApiError("INVALID_WIDGET_ID", f'Invalid widget id "{widget}"')
        partner_id = int(widget[1:])
        secrets = (self.secrets or self.admin_secrets).for_partner(partner_id)
        expiry = int(params.get("expiry") or 86400)
        ks = make_ks_v1(
            partner_id=partner_id,
            secret=secrets[0] if secrets else "stand-in-widget-secret",
            user_id="0",
            session_type=0,
            expiry=int(time.time()) + expiry,
            privileges="view:*,widget:1",
        )
        return {
            "partnerId": partner_id,
            "ks": ks,
            "userId": 0,
            "objectType": "KalturaStartWidgetSessionResponse",
        }

    def _admin_session(self, params: dict[str, Any]) -> KalturaSession:
        secrets = self.admin_secrets or self.secrets
        ks = str(params.get("ks") or "")
        session = parse_ks(ks, secrets) if ks else None
        if session is None or not (session.verified or not secrets):
            raise ApiError("INVALID_KS", f'Invalid KS "{ks}"')
        if session.session_type != SESSION_TYPE_ADMIN:
            raise ApiError(
                "SERVICE_FORBIDDEN", "this call needs an admin session (type 2)"
            )
        return session

    def _list_categories(self, params: dict[str, Any]) -> dict[str, Any]:
        self._admin_session(params)
        filter_ = params.get("filter")
        filter_ = filter_ if isinstance(filter_, dict) else {}
        found = sorted(self.categories.items())
        if "fullNameEqual" in filter_:
            found = [c for c in found if c[1] == str(filter_["fullNameEqual"])]
        if "idIn" in filter_:
            ids = {int(i) for i in str(filter_["idIn"]).split(",") if i.isdigit()}
            found = [c for c in found if c[0] in ids]
        objects = [
            {
                "id": id_,
                "name": name.rpartition(">")[2],
                "fullName": name,
                "objectType": "KalturaCategory",
            }
            for id_, name in found
        ]
        return _list_response("KalturaCategoryListResponse", objects)

    def _list_category_entries(self, params: dict[str, Any]) -> dict[str, Any]:
        self._admin_session(params)
        filter_ = params.get("filter")
        entry_id = (
            str(filter_.get("entryIdEqual", "")) if isinstance(filter_, dict) else ""
        )
        objects = [
            {
                "categoryId": category_id,
                "entryId": entry_id,
                "objectType": "KalturaCategoryEntry",
            }
            for category_id in self.entry_categories.get(entry_id, [])
        ]
        return _list_response("KalturaCategoryEntryListResponse", objects)

    def _collect(self, params: dict[str, Any]) -> bool:
        ks = params.get("ks")
        if ks:
            session = parse_ks(str(ks), self.secrets)
            signed = session is not None and (session.verified or not self.secrets)
            if session is None or not signed:
                raise ApiError("INVALID_KS", f'Invalid KS "{ks}"')
        event = params.get("event")
        event_type = str(event.get("eventType", "")) if isinstance(event, dict) else ""
        if not event_type.isdigit() or not 1 <= int(event_type) <= 40:
            raise ApiError(
                "INVALID_ENUM_VALUE",
                f'Invalid enumeration value "{event_type}" for KalturaStatsEventType',
            )
        return True

    def multirequest(self, params: dict[str, Any]) -> list[Any]:
        results: list[Any] = []
        indices = sorted(int(k) for k in params if k.isascii() and k.isdigit())
        for index in indices:
            call = params[str(index)]
            if not isinstance(call, dict) or "service" not in call:
                break
            for common in ("ks", "partnerId", "clientTag"):
                if common in params and common not in call:
                    call = {**call, common: params[common]}
            try:
                results.append(self.call(call))
            except ApiError as error:
                results.append(error)
        return results


def _list_response(object_type: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"objects": objects, "totalCount": len(objects), "objectType": object_type}


def _xml_value(value: Any) -> str:
    if isinstance(value, ApiError):
        return (
            "<error><objectType>KalturaAPIException</objectType>"
            f"<code>{value.code}</code><message>{value}</message></error>"
        )
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return "".join(f"<item>{_xml_value(v)}</item>" for v in value)
    if isinstance(value, dict):
        return "".join(f"<{k}>{_xml_value(v)}</{k}>" for k, v in value.items())
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, ApiError):
        return {
            "code": value.code,
            "message": str(value),
            "objectType": "KalturaAPIException",
            "args": {},
        }
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def render_answer(
    result: Any, params: dict[str, Any], callback: str | None
) -> web.Response:
    """``result`` in the format the call asked for."""
    headers = {"Access-Control-Allow-Origin": "*"}
    fmt = str(params.get("format", "2"))
    if fmt == "9" and callback is not None and _CALLBACK.fullmatch(callback):
        body = orjson.dumps(_json_value(result)).decode()
        return web.Response(
            text=f"{callback}({body});",
            content_type="application/javascript",
            headers=headers,
        )
    if fmt in ("1", "9"):
        return web.Response(
            body=orjson.dumps(_json_value(result)),
            content_type="application/json",
            headers=headers,
        )
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<xml><result>{_xml_value(result)}</result>"
        "<executionTime>0.001</executionTime></xml>"
    )
    return web.Response(text=xml, content_type="text/xml", headers=headers)


def make_standin_app(standin: StandIn) -> web.Application:
    """An aiohttp application serving ``standin`` under ``/api_v3/``."""

    async def api(request: web.Request) -> web.Response:
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        query = request.raw_path.partition("?")[2]
        params = request_params(request.path, query, content_type, body)
        standin.received.append(
            RecordedRequest(
                request.method,
                request.raw_path,
                tuple(request.headers.items()),
                body,
                params,
            )
        )

        callback = request.query.get("callback")
        if str(params.get("service", "")).lower() == "multirequest":
            return render_answer(standin.multirequest(params), params, callback)
        try:
            result = standin.call(params)
        except ApiError as error:
            return render_answer(error, params, callback)
        return render_answer(result, params, callback)

    app = web.Application()
    app.router.add_route("*", "/api_v3/{tail:.*}", api)
    app.router.add_route("*", "//api_v3/{tail:.*}", api)
    return app
