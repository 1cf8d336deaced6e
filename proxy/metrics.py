"""Step 6, record: the Prometheus metrics of SPEC section 6.

Every metric is created against the registry passed in, so tests build a
fresh one each time. Labels are bounded: kinds, codes, field names, source
kinds, rule names (from the operator's files) and reasons, never a user,
entry, session, path or address. Event types outside Kaltura's enums are
counted as ``other``.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

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
_LATENCY_BUCKETS: Final = (
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


class Metrics:
    """The proxy's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[Any, ...], Any] = {}
        self.requests = Counter(
            "kstats_requests",
            "Requests answered, by kind and HTTP status.",
            ["kind", "code"],
            registry=registry,
        )
        self.events = Counter(
            "kstats_events",
            "Player statistics events seen, by API and event type.",
            ["api", "event_type"],
            registry=registry,
        )
        self.enrichments = Counter(
            "kstats_enrichments",
            "How each report field of each event was settled: the source of "
            "its value, 'event' when the player sent it, 'none' when still "
            "missing, 'invalid' for each rejected value.",
            ["field", "source"],
            registry=registry,
        )
        self.rule_matches = Counter(
            "kstats_rule_matches",
            "Events a rule's conditions matched.",
            ["rule"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "kstats_upstream_request_duration_seconds",
            "Time from sending a request upstream to its answer's last byte.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "kstats_upstream_failures",
            "Upstream requests that failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "kstats_rejected_requests",
            "Requests the proxy refused itself, by reason.",
            ["reason"],
            registry=registry,
        )
        self.rules_reloads = Counter(
            "kstats_rules_reloads",
            "Rules loads after start, by result.",
            ["result"],
            registry=registry,
        )
        self.rules_info = Gauge(
            "kstats_rules_info",
            "The rule set in use (value 1), by the hash of its files.",
            ["hash"],
            registry=registry,
        )

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set.

        prometheus-client validates and hashes labels on every call; the
        label sets here are few and bounded, so their children are kept.
        """
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_rules(self, digest: str) -> None:
        """Point ``kstats_rules_info`` at the rule set now in use."""
        self.rules_info.clear()
        self.rules_info.labels(hash=digest).set(1)
