"""A dry run of the rules on one request, for ``demo`` (and operators).

:func:`explain_request` takes a request apart and enriches it exactly as
the proxy would, without sending anything, and reports for each event its
page URL, the rules that matched, and each field before and after with
the rule and source that gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.enrich import Enricher, Enrichment
from proxy.kaltura.fields import FIELDS, Field
from proxy.kaltura.recognise import RequestKind, recognise
from proxy.kaltura.session import KsReader
from proxy.rules.model import RuleSet


@dataclass(frozen=True, slots=True)
class FieldReport:
    """One field of one event: before, after, and who decided."""

    field: Field
    before: str | None
    after: str | None
    source: str
    rule: str | None


@dataclass(frozen=True, slots=True)
class EventReport:
    """What the rules did to one event of a request."""

    index: int | None
    event_type: str | None
    page: str | None
    matched: tuple[str, ...]
    fields: tuple[FieldReport, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """The request's kind, its events, and the request as it would leave."""

    kind: RequestKind
    events: tuple[EventReport, ...]
    target: str
    body: bytes


def _final(enrichments: list[Enrichment], field: Field) -> Enrichment:
    """The enrichment that settled ``field`` (``invalid`` ones are not)."""
    settled = [e for e in enrichments if e.field is field and e.source != "invalid"]
    return settled[-1]


async def explain_request(
    rules: RuleSet,
    ks_reader: KsReader,
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
) -> Explanation:
    """Enrich one request as the proxy would, and say what happened."""
    header_map = CIMultiDictProxy(CIMultiDict(headers))
    content_type = header_map.get("Content-Type")
    recognised = recognise(method, target, content_type, body or None)
    before = [{f: event.get(f) for f in FIELDS} for event in recognised.events]

    outcomes = await Enricher(ks_reader=ks_reader).enrich(
        rules, recognised, headers=header_map, host=header_map.get("Host", "")
    )

    reports = []
    for values, outcome in zip(before, outcomes, strict=True):
        fields = []
        for field in FIELDS:
            final = _final(outcome.enrichments, field)
            fields.append(
                FieldReport(
                    field,
                    values[field],
                    outcome.event.get(field),
                    final.source,
                    final.rule,
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
    )
