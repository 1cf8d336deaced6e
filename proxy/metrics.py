"""Step 6, record: the Prometheus metrics of SPEC section 6.

Every metric is created against the registry passed in, so tests build a
fresh one each time. Labels are bounded: kinds, codes, field names, source
kinds, rule names (from the operator's files) and reasons, never a user,
entry, session, path or address. Event types outside Kaltura's enums are
counted as ``other``.

The counters and histograms the request path moves are plain integers in
dictionaries (:class:`CounterFamily`, :class:`HistogramFamily`), turned
into Prometheus samples only when ``/metrics`` is read. prometheus-client's
own metric objects take a lock and check their state on every increment,
which cost more than a tenth of the event path; here every increment and
every scrape run on the event loop's thread, so no lock is needed. Metrics
that move rarely (the rules in use) stay prometheus-client objects.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.kaltura.fields import Api

# KalturaStatsEventType 1-40 and KAVA's event types (PROTOCOL.md 1.3, 5.3).
_STATS_EVENT_TYPES: Final = frozenset(str(n) for n in range(1, 41))
_KAVA_EVENT_TYPES: Final = frozenset(
    str(n)
    for n in (
        *(1, 2, 3, 4, 11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 31, 32, 33),
        *(34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 45, 46, 98, 99, 10002, 10003),
    )
)

# Upstream answers are fast when Kaltura is healthy; the tail shows trouble.
LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def event_type_label(api: Api, event_type: str | None) -> str:
    """``event_type`` as a label: the enum value, or ``other``."""
    known = _STATS_EVENT_TYPES if api is Api.STATS else _KAVA_EVENT_TYPES
    return event_type if event_type in known else "other"


class CounterFamily:
    """A counter with labels, counted in a dictionary of integers.

    ``inc(*labels)`` adds one to the sample of those label values, in the
    order of ``label_names``; label values are turned into text when the
    metric is read (an enum's text is its value).
    """

    __slots__ = ("counts", "documentation", "label_names", "name")

    def __init__(self, name: str, documentation: str, label_names: tuple[str, ...]):
        self.name = name
        self.documentation = documentation
        self.label_names = label_names
        self.counts: dict[tuple[Hashable, ...], int] = {}

    def inc(self, *labels: Hashable) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def value(self, *labels: Hashable) -> int:
        """The count for those label values, 0 before the first."""
        return self.counts.get(labels, 0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            self.name, self.documentation, labels=self.label_names
        )
        for labels, count in list(self.counts.items()):
            family.add_metric([str(label) for label in labels], count)
        return family


class HistogramFamily:
    """A histogram with labels: per label values, bucket counts and a sum."""

    __slots__ = ("_bounds", "_le", "documentation", "label_names", "name", "samples")

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: tuple[str, ...],
        buckets: tuple[float, ...],
    ):
        self.name = name
        self.documentation = documentation
        self.label_names = label_names
        self._bounds = buckets
        # the ``le`` labels, written as prometheus-client writes them
        self._le = [_le_label(bound) for bound in buckets] + ["+Inf"]
        # per label values: a count per bucket (the last is +Inf), then the sum
        self.samples: dict[tuple[Hashable, ...], list[float]] = {}

    def observe(self, value: float, *labels: Hashable) -> None:
        sample = self.samples.get(labels)
        if sample is None:
            sample = self.samples[labels] = [0.0] * (len(self._bounds) + 2)
        # the first bucket whose upper bound is at or above the value
        sample[bisect.bisect_left(self._bounds, value)] += 1
        sample[-1] += value

    def count(self, *labels: Hashable) -> int:
        """How many values were observed with those label values."""
        sample = self.samples.get(labels)
        return 0 if sample is None else int(sum(sample[:-1]))

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=self.label_names
        )
        for labels, sample in list(self.samples.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(self._le, sample[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(
                [str(label) for label in labels], buckets, sum_value=sample[-1]
            )
        return family


def _le_label(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class Metrics(Collector):
    """The proxy's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = CounterFamily(
            "kstats_requests",
            "Requests answered, by kind and HTTP status.",
            ("kind", "code"),
        )
        self.events = CounterFamily(
            "kstats_events",
            "Player statistics events seen, by API and event type.",
            ("api", "event_type"),
        )
        self.enrichments = CounterFamily(
            "kstats_enrichments",
            "How each report field of each event was settled: the source of "
            "its value, 'event' when the player sent it, 'none' when still "
            "missing, 'invalid' for each rejected value.",
            ("field", "source"),
        )
        self.rule_matches = CounterFamily(
            "kstats_rule_matches",
            "Events a rule's conditions matched.",
            ("rule",),
        )
        self.upstream_duration = HistogramFamily(
            "kstats_upstream_request_duration_seconds",
            "Time from sending a request upstream to its answer's last byte.",
            ("kind",),
            LATENCY_BUCKETS,
        )
        self.upstream_failures = CounterFamily(
            "kstats_upstream_failures",
            "Upstream requests that failed, by reason.",
            ("reason",),
        )
        self.rejected = CounterFamily(
            "kstats_rejected_requests",
            "Requests the proxy refused itself, by reason.",
            ("reason",),
        )
        self.source_calls = CounterFamily(
            "kstats_source_calls",
            "Asks of network sources (lookup, category, entry_category, "
            "widget_ks), by how they were answered: hit (a kept answer), "
            "shared (another ask's call), called, failed, timeout, no_secret.",
            ("source", "outcome"),
        )
        self.spool_replayed = CounterFamily(
            "kstats_spool_replayed",
            "Spooled requests Kaltura accepted when they were sent again.",
            (),
        )
        self.spool_dropped = CounterFamily(
            "kstats_spool_dropped",
            "Requests lost from the spool: the oldest past --spool-max-bytes, "
            "unreadable lines, and requests that could not be written.",
            (),
        )
        self.normalized = CounterFamily(
            "kstats_normalized_requests",
            "Event requests under --normalize get: normalized (each stats "
            "event sent as its own GET), or sent as they came, by why: "
            "line_too_long, format, back_reference.",
            ("result",),
        )
        self.shadow_enrichments = CounterFamily(
            "kstats_shadow_enrichments",
            "Under --shadow: how each report field of each event would have "
            "been settled (kstats_enrichments_total's labels); nothing was "
            "changed.",
            ("field", "source"),
        )
        self.lookup_requests = CounterFamily(
            "kstats_lookup_requests",
            "Asks of each [lookup], by result: hit (answered without a call "
            "of its own: kept, or shared with a call under way), miss (a "
            "call made), error (the call failed, now or within negative_ttl), "
            "timeout (the event stopped waiting).",
            ("lookup", "result"),
        )
        self.rules_reloads = CounterFamily(
            "kstats_rules_reloads",
            "Rules loads after start, by result.",
            ("result",),
        )
        self._families = (
            self.requests,
            self.events,
            self.enrichments,
            self.rule_matches,
            self.upstream_duration,
            self.upstream_failures,
            self.rejected,
            self.source_calls,
            self.lookup_requests,
            self.rules_reloads,
            self.spool_replayed,
            self.spool_dropped,
            self.normalized,
            self.shadow_enrichments,
        )
        registry.register(self)
        self.spool_events = Gauge(
            "kstats_spool_events",
            "Requests in the spool, waiting to be sent again.",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "kstats_spool_bytes",
            "Bytes the spool's requests take on disk.",
            registry=registry,
        )
        self.rules_info = Gauge(
            "kstats_rules_info",
            "The rule set in use (value 1), by the hash of its files.",
            ["hash"],
            registry=registry,
        )

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        for family in self._families:
            yield family.family()

    def set_rules(self, digest: str) -> None:
        """Point ``kstats_rules_info`` at the rule set now in use."""
        self.rules_info.clear()
        self.rules_info.labels(hash=digest).set(1)
