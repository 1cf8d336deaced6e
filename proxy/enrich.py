"""Steps 2 to 4: match the rules, resolve each missing field, apply the values.

For every event of a request, and for each of userId, applicationName and
playbackContext:

1. a KS carrying a real user decides the user downstream: userId is
   reported with source ``ks`` and left alone;
2. a value the event carries is kept (policy ``fill``), unless a matching
   rule with policy ``override`` yields one;
3. otherwise the matching rules are tried in file order, and within a rule
   the field's sources in order; the first value that passes
   :func:`~proxy.kaltura.fields.sanitise_value` wins; each value that does
   not is counted as ``invalid`` and the search goes on.

Every rule is matched, and every source read, before the first value is
written, so the outcome never depends on what another rule wrote.

Last, a ``stats.collect`` event that leaves with a userId but no KS would
still be counted as "Unknown" by the reports pipeline (PROTOCOL.md 1.5):
unless ``[kaltura] widget_ks = false``, it gets a widget KS for its
partner, when one can be had.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from proxy.kaltura.events import EventView
from proxy.kaltura.fields import FIELDS, Api, Field, sanitise_value
from proxy.kaltura.params import QueryParams
from proxy.kaltura.recognise import Recognised
from proxy.kaltura.session import KsReader
from proxy.rules.context import SourceContext
from proxy.rules.model import KalturaSettings, Policy, Rule, RuleSet
from proxy.rules.remote import Services, event_partner

# The ``source`` label values that are not a rule source's kind.
SOURCE_EVENT = "event"
SOURCE_KS = "ks"
SOURCE_NONE = "none"
SOURCE_INVALID = "invalid"

# The field that a KS naming a real user decides downstream. XXX: a set
# rather than ``is Field.USER_ID``: Python 3.11 finds an enum member
# through EnumType.__getattr__, which costs more than this set lookup.
_DECIDED_BY_KS: Final = frozenset({Field.USER_ID})


class Enrichment(NamedTuple):
    """How one field of one event was settled.

    ``source`` is the kind of the source that gave the value, or ``event``,
    ``ks``, ``none`` (still missing) or ``invalid`` (a value was rejected;
    the field's final outcome is reported separately). ``value`` is the
    value written, None when nothing was written.

    XXX: a named tuple rather than a frozen dataclass: just as immutable,
    and built in half the time (several are built for every event).
    """

    field: Field
    source: str
    rule: str | None = None
    value: str | None = None


@dataclass(slots=True)
class EventOutcome:
    """What enrichment found and did for one event."""

    event: EventView
    page: str | None
    matched: tuple[str, ...]
    enrichments: list[Enrichment] = field(default_factory=list)
    widget_ks: bool = False  # a widget KS was attached
    context: SourceContext | None = None

    @property
    def added(self) -> list[Enrichment]:
        """The values the proxy wrote into the event."""
        return [e for e in self.enrichments if e.value is not None]


def page_url(event: EventView, headers: Mapping[str, str]) -> str | None:
    """The URL of the page that embeds the player.

    The event's own referrer comes first, then the HTTP ``Referer``. KAVA's
    documentation says its referrer is base64; players send it plain, and
    both are read.
    """
    referrer = event.attribute("referrer")
    if referrer and not referrer.startswith("http") and event.api is Api.KAVA:
        try:
            decoded = base64.b64decode(referrer, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = ""
        if decoded.startswith(("http://", "https://")):
            referrer = decoded
    return referrer or headers.get("Referer")


class Enricher:
    """Resolves and applies the report fields of a request's events."""

    def __init__(
        self, *, ks_reader: KsReader, services: Services | None = None
    ) -> None:
        self._ks_reader = ks_reader
        self._services = services

    async def enrich(
        self,
        rules: RuleSet,
        recognised: Recognised,
        *,
        headers: Mapping[str, str],
        host: str,
        widget_ks: bool = True,
    ) -> list[EventOutcome]:
        """Enrich every event of ``recognised`` in place; report the outcomes.

        ``widget_ks`` false skips the widget KS (shadow mode sends nothing
        of the proxy's own).
        """
        params: tuple[QueryParams, ...] = (recognised.query,)
        if recognised.form is not None:
            params = (recognised.query, recognised.form)
        path, ks_user = recognised.path, self._ks_reader.user
        services = self._services

        # match and resolve everything against the request as it came
        outcomes = []
        for event in recognised.events:
            page = page_url(event, headers)
            # XXX: positional arguments: keyword arguments to a class cost a
            # dict per call (Python 3.11)
            context = SourceContext(
                headers, host, path, params, event, page, ks_user, services
            )
            matched = [rule for rule in rules.rules if rule.when.matches(context)]
            outcome = EventOutcome(event, page, tuple([r.name for r in matched]))
            outcome.context = context
            for report_field in FIELDS:
                await self._resolve(report_field, context, matched, outcome)
            outcomes.append(outcome)

        # then write
        for outcome in outcomes:
            event = outcome.event
            for enrichment in outcome.enrichments:
                if enrichment.value is not None:
                    event.set(enrichment.field, enrichment.value)

        # an event with a user and no KS: a widget KS, so the user counts
        if services is not None and rules.kaltura.widget_ks and widget_ks:
            for outcome in outcomes:
                await _attach_widget_ks(services, rules.kaltura, outcome)
        return outcomes

    async def _resolve(
        self,
        report_field: Field,
        context: SourceContext,
        matched: list[Rule],
        outcome: EventOutcome,
    ) -> None:
        record = outcome.enrichments.append
        if report_field in _DECIDED_BY_KS and context.request_ks_user() is not None:
            record(Enrichment(report_field, SOURCE_KS))
            return

        existing = context.event.get(report_field)
        candidates = matched
        if existing is not None:
            candidates = [
                rule for rule in matched if rule.policy(report_field) is Policy.OVERRIDE
            ]

        for rule in candidates:
            for source in rule.sources.get(report_field, ()):
                if source.needs_network:
                    raw = await source.fetch(context)
                else:
                    raw = source.extract(context)
                if raw is None:
                    continue

                value = sanitise_value(report_field, raw)
                if value is None:
                    record(Enrichment(report_field, SOURCE_INVALID, rule.name))
                    continue

                written = None if value == existing else value
                record(Enrichment(report_field, source.kind, rule.name, written))
                return

        settled = SOURCE_EVENT if existing is not None else SOURCE_NONE
        record(Enrichment(report_field, settled))


async def _attach_widget_ks(
    services: Services, kaltura: KalturaSettings, outcome: EventOutcome
) -> None:
    event = outcome.event
    if event.api is not Api.STATS or event.ks is not None:
        return
    if event.get(Field.USER_ID) is None or outcome.context is None:
        return
    partner = event_partner(outcome.context, kaltura)
    if partner is None:
        return
    ks = await services.widget_ks(kaltura, partner)
    if ks is not None:
        event.set_param("ks", ks)
        outcome.widget_ks = True
