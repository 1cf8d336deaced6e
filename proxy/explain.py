"""A dry run of the rules on one request, for ``explain``, ``replay`` and ``demo``.

:func:`explain_request` takes a request apart and enriches it as the
proxy would (steps 1 to 4), without sending anything, and reports for
each event its page URL, the rules that matched, and each field before
and after with the rule and source that gave it; then the request's
target and body before and after.

A dry run never touches the network. Sources that need it (``lookup`` to
the legacy application, Kaltura's ``category`` and ``entry_category``)
are replaced by stand-ins that yield nothing and note that they were
reached: a field that only such a source could have given shows as still
missing, with the sources that were not called (:class:`UncalledSource`).
The widget KS the proxy may attach to an event is not fetched either.

A request the proxy would not read for events (a method other than GET
or POST, a path outside ``/api_v3/``, a body that is neither a form nor
JSON or is too large, an API call other than statistics) is reported as
passed through, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import ProxySettings, origin_form
from proxy.columns import align_columns, shorten, show
from proxy.enrich import SOURCE_INVALID, SOURCE_KS, Enricher, Enrichment
from proxy.kaltura.events import EventView
from proxy.kaltura.fields import FIELDS, Field
from proxy.kaltura.recognise import RequestKind, is_api_path, recognise
from proxy.kaltura.session import KsReader
from proxy.rules.context import SourceContext
from proxy.rules.model import Rule, RuleSet
from proxy.rules.remote import Services
from proxy.rules.sources import Source

# The last words of every dry-run report.
DRY_RUN_NOTE: Final = (
    "dry run: nothing was sent. Network sources (lookup, category,\n"
    "entry_category) are not called in a dry run: a field only they could\n"
    "give shows as missing."
)

DEFAULT_MAX_EVENT_BODY: Final = ProxySettings().max_event_body

# Why a request has no events to enrich: the proxy passes it through.
PASSED_BAD_TARGET: Final = "invalid request target (answered 400)"
PASSED_METHOD: Final = "method other than GET or POST"
PASSED_PATH: Final = "not under /api_v3/"
PASSED_MEDIA_TYPE: Final = "body neither form nor JSON"
PASSED_TOO_LARGE: Final = "body larger than the event body limit"
PASSED_OTHER_CALL: Final = "API call other than statistics"
PASSED_NO_STATS: Final = "multirequest without stats.collect"
PASSED_UNREADABLE: Final = "unreadable body"

_EVENT_MEDIA_TYPES: Final = ("application/json", "application/x-www-form-urlencoded")


class FieldStatus(StrEnum):
    """Where a field of an event stands after enrichment.

    ``present``: the event had it, or its KS names the user, and it is
    kept; ``replaced``: the event had one and a rule with policy
    ``override`` wrote another; ``added``: the event had none and a rule
    gave it; ``missing``: still none.
    """

    PRESENT = "present"
    REPLACED = "replaced"
    ADDED = "added"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class UncalledSource:
    """A network source the dry run reached and did not call."""

    rule: str
    kind: str  # lookup, category, entry_category


@dataclass(frozen=True, slots=True)
class FieldReport:
    """One field of one event: before, after, and who decided.

    ``source`` and ``rule`` name what settled the field (``event``, ``ks``
    and ``none`` have no rule). ``invalid`` names the rules whose value
    was dropped as invalid on the way; ``uncalled`` the network sources
    the dry run reached, which the proxy would have called.
    """

    field: Field
    before: str | None
    after: str | None
    source: str
    rule: str | None
    invalid: tuple[str, ...] = ()
    uncalled: tuple[UncalledSource, ...] = ()

    @property
    def status(self) -> FieldStatus:
        if self.source == SOURCE_KS:
            return FieldStatus.PRESENT
        if self.after is None:
            return FieldStatus.MISSING
        if self.before is None:
            return FieldStatus.ADDED
        if self.after != self.before:
            return FieldStatus.REPLACED
        return FieldStatus.PRESENT

    @property
    def changed(self) -> bool:
        return self.after != self.before


@dataclass(frozen=True, slots=True)
class EventReport:
    """What the rules did to one event of a request.

    ``index`` is the sub-request number inside a multirequest, else None.
    """

    index: int | None
    event_type: str | None
    page: str | None
    matched: tuple[str, ...]
    fields: tuple[FieldReport, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """What enrichment changed in a request's target or body.

    A query or form body is compared as ``key=value`` segments (raw, as on
    the wire), a JSON body as ``path.to.key=value`` leaves; ``removed`` and
    ``added`` keep the order they have in the request.
    """

    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


@dataclass(frozen=True, slots=True)
class Explanation:
    """A request, its events, and the request as it would leave.

    ``target`` and ``body`` are what would be sent, ``original_target`` and
    ``original_body`` what came. ``passed_through`` says why a request
    without events would go as it came; it is None for event requests.
    """

    kind: RequestKind
    events: tuple[EventReport, ...]
    target: str
    body: bytes
    method: str = "GET"
    host: str = ""
    original_target: str = ""
    original_body: bytes = b""
    passed_through: str | None = None

    @property
    def target_change(self) -> Change:
        return _difference(
            _target_parts(self.original_target), _target_parts(self.target)
        )

    @property
    def body_change(self) -> Change:
        if self.body == self.original_body:
            return Change()
        return _difference(_body_parts(self.original_body), _body_parts(self.body))


# -- comparing a request before and after ----------------------------------------


def _target_parts(target: str) -> list[str]:
    path, _, query = target.partition("?")
    return [path, *(segment for segment in query.split("&") if segment)]


def _leaves(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    else:
        yield f"{path}={orjson.dumps(value).decode()}"


def _body_parts(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        try:
            return list(_leaves(orjson.loads(body), ""))
        except orjson.JSONDecodeError:
            pass
    return [segment for segment in text.split("&") if segment]


def _difference(before: list[str], after: list[str]) -> Change:
    """The parts only ``before`` has, and those only ``after`` has."""
    unmatched_after = Counter(after)
    removed = []
    for part in before:
        if unmatched_after[part]:
            unmatched_after[part] -= 1
        else:
            removed.append(part)

    unmatched_before = Counter(before)
    added = []
    for part in after:
        if unmatched_before[part]:
            unmatched_before[part] -= 1
        else:
            added.append(part)
    return Change(tuple(removed), tuple(added))


# -- offline: network sources are reached, never called ---------------------------

_Reached = list[tuple[EventView, Field, UncalledSource]]


@dataclass(frozen=True, slots=True)
class _OfflineSource:
    """Stands in for a network source: notes that it was reached, yields nothing."""

    kind: str
    field: Field
    uncalled: UncalledSource
    reached: _Reached

    needs_network: ClassVar[bool] = False

    def extract(self, context: SourceContext) -> str | None:
        self.reached.append((context.event, self.field, self.uncalled))
        return None

    async def fetch(self, context: SourceContext) -> str | None:
        return self.extract(context)


def _offline_rule(rule: Rule, reached: _Reached) -> Rule:
    sources: dict[Field, tuple[Source, ...]] = {}
    for field, field_sources in rule.sources.items():
        sources[field] = tuple(
            _OfflineSource(
                source.kind, field, UncalledSource(rule.name, source.kind), reached
            )
            if source.needs_network
            else source
            for source in field_sources
        )
    return dataclasses.replace(rule, sources=sources)


def offline_rules(rules: RuleSet, reached: _Reached) -> RuleSet:
    """``rules`` with every network source replaced by an offline stand-in.

    Each stand-in appends ``(event, field, source)`` to ``reached`` when
    the resolver gets to it. A rule set without network sources is
    returned as it is.
    """
    if not any(
        source.needs_network
        for rule in rules.rules
        for sources in rule.sources.values()
        for source in sources
    ):
        return rules
    offline = tuple(_offline_rule(rule, reached) for rule in rules.rules)
    return dataclasses.replace(rules, rules=offline)


# -- the dry run --------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _passed_through_unread(
    method: str, target: str, content_type: str | None, body: bytes, limit: int
) -> str | None:
    """Why the proxy would stream a request without reading it, if it would."""
    if method not in ("GET", "POST"):
        return PASSED_METHOD
    if not is_api_path(target):
        return PASSED_PATH
    if body and _media_type(content_type) not in _EVENT_MEDIA_TYPES:
        return PASSED_MEDIA_TYPE
    if len(body) > limit:
        return PASSED_TOO_LARGE
    return None


def _no_events_reason(kind: RequestKind) -> str:
    if kind is RequestKind.OTHER:
        return PASSED_OTHER_CALL
    if kind is RequestKind.MULTIREQUEST:
        return PASSED_NO_STATS
    return PASSED_UNREADABLE  # a stats or KAVA call whose body cannot be read


def _field_report(
    field: Field,
    before: str | None,
    event: EventView,
    enrichments: list[Enrichment],
    uncalled: tuple[UncalledSource, ...],
) -> FieldReport:
    mine = [e for e in enrichments if e.field is field]
    # the last enrichment that is not a rejected value settled the field
    final = [e for e in mine if e.source != SOURCE_INVALID][-1]
    invalid = tuple(e.rule for e in mine if e.source == SOURCE_INVALID and e.rule)
    return FieldReport(
        field,
        before,
        event.get(field),
        final.source,
        final.rule,
        tuple(dict.fromkeys(invalid)),
        uncalled,
    )


async def explain_request(
    rules: RuleSet,
    ks_reader: KsReader,
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    max_event_body: int = DEFAULT_MAX_EVENT_BODY,
    services: Services | None = None,
) -> Explanation:
    """Enrich one request as the proxy would, without sending anything.

    ``target`` is the request target as sent (origin form, or absolute
    form whose host is ignored as the proxy ignores it); ``headers`` the
    request's headers, ``Host`` included. With ``services`` (the demo,
    whose services are stand-ins on this machine), network sources are
    asked for real instead of being reported as not called.
    """
    header_map = CIMultiDictProxy(CIMultiDict(headers))
    host = header_map.get("Host", "")
    content_type = header_map.get("Content-Type")
    unchanged = Explanation(
        RequestKind.OTHER,
        (),
        target,
        body,
        method=method,
        host=host,
        original_target=target,
        original_body=body,
    )

    # what the proxy would stream through without reading it
    origin = origin_form(target)
    if origin is None:
        return dataclasses.replace(unchanged, passed_through=PASSED_BAD_TARGET)
    reason = _passed_through_unread(method, origin, content_type, body, max_event_body)
    if reason is not None:
        return dataclasses.replace(unchanged, passed_through=reason)

    # recognise
    recognised = recognise(method, origin, content_type, body or None)
    if not recognised.events:
        reason = _no_events_reason(recognised.kind)
        return dataclasses.replace(
            unchanged, kind=recognised.kind, passed_through=reason
        )
    before = [{f: event.get(f) for f in FIELDS} for event in recognised.events]

    # match, resolve and apply, with the network sources offline
    reached: _Reached = []
    enricher = Enricher(ks_reader=ks_reader, services=services)
    used = rules if services is not None else offline_rules(rules, reached)
    outcomes = await enricher.enrich(used, recognised, headers=header_map, host=host)

    reports = []
    for values, outcome in zip(before, outcomes, strict=True):
        fields = []
        for field in FIELDS:
            uncalled = tuple(
                source
                for event, reached_field, source in reached
                if event is outcome.event and reached_field is field
            )
            fields.append(
                _field_report(
                    field, values[field], outcome.event, outcome.enrichments, uncalled
                )
            )
        reports.append(
            EventReport(
                outcome.event.index,
                outcome.event.event_type,
                outcome.page,
                outcome.matched,
                tuple(fields),
            )
        )
    return Explanation(
        recognised.kind,
        tuple(reports),
        recognised.render_target(),
        recognised.render_body(body),
        method=method,
        host=host,
        original_target=origin,
        original_body=body,
    )


def split_url(url: str) -> tuple[str | None, str]:
    """The host and request target of an ``explain`` URL.

    An absolute URL (``https://host[:port]/path?query``) gives its host,
    as a browser would write it in ``Host``; a path (``/api_v3/...``,
    KDP3's ``//api_v3/...`` too) gives no host. The path and query are
    kept exactly as written. ValueError says what is wrong.
    """
    if url.lower().startswith(("http://", "https://")):
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        if not host:
            raise ValueError(f"no host in {url!r}")
        target = parts.path or "/"
        return host, f"{target}?{parts.query}" if parts.query else target
    if url.startswith("/"):
        return None, url.partition("#")[0]
    message = f"expected an absolute http(s) URL or a path starting with /, got {url!r}"
    raise ValueError(message)


# -- reports ---------------------------------------------------------------------


def describe_source(report: FieldReport) -> str:
    """Who settled a field, in words: ``header, rule moodle``, ``event``, ..."""
    how = (
        report.source if report.rule is None else f"{report.source}, rule {report.rule}"
    )
    notes = [how]
    if report.invalid:
        notes.append("invalid value dropped from rule " + ", ".join(report.invalid))
    if report.uncalled:
        called = (f"{u.kind} of rule {u.rule}" for u in report.uncalled)
        notes.append("not called: " + ", ".join(called))
    return "; ".join(notes)


def field_row(report: FieldReport) -> list[str]:
    """A field's cells: name, before, ``-> after`` (or the same), how."""
    arrow = "-> " if report.changed else "   "
    return [
        report.field,
        show(report.before),
        arrow + show(report.after),
        f"({describe_source(report)})",
    ]


def event_heading(report: EventReport) -> str:
    """``event`` for a single call, ``event N`` for sub-request N."""
    return "event" if report.index is None else f"event {report.index}"


def change_lines(change: Change) -> list[str]:
    """``- part`` and ``+ part`` lines, or ``unchanged``."""
    if not change:
        return ["unchanged"]
    lines = [f"- {shorten(part, 100)}" for part in change.removed]
    lines += [f"+ {shorten(part, 100)}" for part in change.added]
    return lines


def _labelled(label: str, lines: list[str]) -> list[str]:
    """``lines`` with ``label`` before the first, the others aligned under it."""
    return [f"{label if n == 0 else '':<17}{line}" for n, line in enumerate(lines)]


def kind_line(explanation: Explanation) -> str:
    """``stats, 1 event``, or why the request passes through."""
    reason = explanation.passed_through
    if reason is not None:
        return f"{explanation.kind}: passed through unchanged ({reason})"
    count = len(explanation.events)
    return f"{explanation.kind}, {count} event{'s' if count != 1 else ''}"


def render_explanation(explanation: Explanation) -> str:
    """The explanation as aligned text for a terminal, ending in a newline."""
    target = shorten(explanation.original_target, 60)
    lines = [
        f"request          {explanation.method} {target}",
        f"host             {show(explanation.host or None)}",
        f"kind             {kind_line(explanation)}",
    ]

    for event in explanation.events:
        lines.append("")
        lines.append(f"{event_heading(event)}  (event type {show(event.event_type)})")
        lines.append(f"  page             {show(event.page)}")
        lines.append(f"  rules matched    {', '.join(event.matched) or '-'}")
        lines += align_columns([field_row(f) for f in event.fields], indent="  ")

    if not explanation.passed_through:
        lines.append("")
        lines += _labelled("target", change_lines(explanation.target_change))
        lines += _labelled("body", change_lines(explanation.body_change))
    lines += ["", DRY_RUN_NOTE]
    return "\n".join(lines) + "\n"


def field_document(report: FieldReport) -> dict[str, Any]:
    return {
        "before": report.before,
        "after": report.after,
        "status": report.status.value,
        "source": report.source,
        "rule": report.rule,
        "invalid_from": list(report.invalid),
        "not_called": [{"rule": u.rule, "kind": u.kind} for u in report.uncalled],
    }


def event_document(report: EventReport) -> dict[str, Any]:
    return {
        "index": report.index,
        "event_type": report.event_type,
        "page": report.page,
        "rules_matched": list(report.matched),
        "fields": {f.field.value: field_document(f) for f in report.fields},
    }


def change_document(change: Change) -> dict[str, Any]:
    return {"removed": list(change.removed), "added": list(change.added)}


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def explanation_json(explanation: Explanation) -> str:
    """The explanation as one JSON document, for machines."""
    document = {
        "method": explanation.method,
        "host": explanation.host,
        "kind": explanation.kind.value,
        "passed_through": explanation.passed_through,
        "events": [event_document(e) for e in explanation.events],
        "target": {
            "before": explanation.original_target,
            "after": explanation.target,
            **change_document(explanation.target_change),
        },
        "body": {
            "before": _text(explanation.original_body),
            "after": _text(explanation.body),
            **change_document(explanation.body_change),
        },
        "network_sources_called": False,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
