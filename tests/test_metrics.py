"""The plain-integer metric families, held to prometheus-client's own output."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.kaltura.fields import Api, Field
from proxy.kaltura.recognise import RequestKind
from proxy.metrics import (
    LATENCY_BUCKETS,
    CounterFamily,
    HistogramFamily,
    Metrics,
    event_type_label,
)


def _exposition(registry: CollectorRegistry, name: str) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if name in line and "_created" not in line)


def test_counter_family_exposes_what_a_prometheus_counter_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = CounterFamily("kstats_x", "Things.", ("field", "source"))
    ours.register(_Single(family))
    counter = Counter("kstats_x", "Things.", ["field", "source"], registry=theirs)

    for labels in [(Field.USER_ID, "cookie")] * 3 + [(Field.USER_ID, "none")]:
        family.inc(*labels)
        counter.labels(*labels).inc()

    assert _exposition(theirs, "kstats_x") == _exposition(ours, "kstats_x")
    assert 3 == family.value(Field.USER_ID, "cookie")
    assert 0 == family.value(Field.USER_ID, "header")


def test_histogram_family_exposes_what_a_prometheus_histogram_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = HistogramFamily("kstats_t", "Times.", ("kind",), LATENCY_BUCKETS)
    ours.register(_Single(family))
    histogram = Histogram(
        "kstats_t", "Times.", ["kind"], buckets=LATENCY_BUCKETS, registry=theirs
    )

    # values on bucket bounds, between them, and above the last
    rng = random.Random(7)
    values = [*LATENCY_BUCKETS, 0.0, 30.0] + [rng.uniform(0, 12) for _ in range(200)]
    for value in values:
        kind = rng.choice([RequestKind.STATS, RequestKind.KAVA])
        family.observe(value, kind)
        histogram.labels(kind).observe(value)

    assert _exposition(theirs, "kstats_t") == _exposition(ours, "kstats_t")
    assert len(values) == family.count(RequestKind.STATS) + family.count(
        RequestKind.KAVA
    )


def test_metrics_are_read_through_the_registry_as_samples() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    metrics.requests.inc(RequestKind.STATS, 200)
    metrics.requests.inc(RequestKind.STATS, 200)
    metrics.upstream_duration.observe(0.003, RequestKind.STATS)
    metrics.set_rules("abc123")

    sample = registry.get_sample_value
    assert 2 == sample("kstats_requests_total", {"kind": "stats", "code": "200"})
    assert 1 == sample(
        "kstats_upstream_request_duration_seconds_bucket",
        {"kind": "stats", "le": "0.005"},
    )
    assert 1 == sample("kstats_rules_info", {"hash": "abc123"})
    assert sample("kstats_events_total", {"api": "stats", "event_type": "1"}) is None


def test_event_types_outside_the_enums_are_counted_as_other() -> None:
    assert "3" == event_type_label(Api.STATS, "3")
    assert "other" == event_type_label(Api.STATS, "77")
    assert "10002" == event_type_label(Api.KAVA, "10002")
    assert "other" == event_type_label(Api.KAVA, None)


class _Single:
    """One family as a collector, for a registry of its own."""

    def __init__(self, family: CounterFamily | HistogramFamily) -> None:
        self._family = family

    def collect(self) -> list[object]:
        return [self._family.family()]
