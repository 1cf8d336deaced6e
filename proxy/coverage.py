"""Coverage since start: how many events left with each report field present.

The ``/status`` page shows it per field, per API and per rule, for sites
that have no Prometheus to ask (``kstats_enrichments_total`` answers the
same question over time). A field counts as present when the event left
with a value: its own, the one a KS decided, or one the proxy added; it is
missing when its outcome was ``none``.

Every count is a plain integer updated on the event loop's thread, as the
metrics are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from proxy.enrich import SOURCE_INVALID, SOURCE_NONE, EventOutcome
from proxy.kaltura.fields import FIELDS, Field


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One line of the page: a scope (all, an API, a rule) and its counts."""

    name: str
    events: int
    present: dict[Field, int]

    def share(self, report_field: Field) -> float:
        """The share of this row's events that left with the field, 0 to 1."""
        return self.present[report_field] / self.events if self.events else 0.0


@dataclass(slots=True)
class Coverage:
    """Counts of events, and of events with each field present, by scope."""

    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    present: Counter[tuple[str, str, Field]] = field(default_factory=Counter)

    def record(self, outcome: EventOutcome) -> None:
        """Count one event that left the proxy."""
        settled = {
            e.field: e.source for e in outcome.enrichments if e.source != SOURCE_INVALID
        }
        scopes = [("all", ""), ("api", str(outcome.event.api))]
        scopes += [("rule", rule) for rule in outcome.matched]
        for scope in scopes:
            self.events[scope] += 1
            for report_field in FIELDS:
                if settled.get(report_field, SOURCE_NONE) != SOURCE_NONE:
                    self.present[(*scope, report_field)] += 1

    def rows(self, kind: str) -> list[CoverageRow]:
        """The rows of one kind of scope (``all``, ``api`` or ``rule``), by name."""
        names = sorted(name for scope, name in self.events if scope == kind)
        return [
            CoverageRow(
                name or "all events",
                self.events[(kind, name)],
                {f: self.present[(kind, name, f)] for f in FIELDS},
            )
            for name in names
        ]
