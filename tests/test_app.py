"""The assembled proxy: which requests are events, and what it counts."""

from __future__ import annotations

from support import load_records, send_raw

KAVA = (
    "/api_v3/index.php?service=analytics&action=trackEvent"
    "&eventType=3&partnerId=1234&entryId=0_abcd1234&sessionId=s1"
)


async def test_a_cors_preflight_of_an_event_url_is_passed_through_untouched(
    upstream, start_proxy
) -> None:
    running = await start_proxy(upstream.url)
    request = (
        f"OPTIONS {KAVA} HTTP/1.1\r\nHost: kms.example.edu\r\n"
        "Origin: https://kms.example.edu\r\n"
        "Access-Control-Request-Method: POST\r\n\r\n"
    ).encode()
    await send_raw(running.ports[0], request)

    (received,) = upstream.standin.received
    assert ("OPTIONS", KAVA) == (received.method, received.target)
    registry = running.app.metrics.registry
    assert registry.get_sample_value(
        "kstats_requests_total", {"kind": "other", "code": "200"}
    )
    assert (
        registry.get_sample_value(
            "kstats_events_total", {"api": "kava", "event_type": "3"}
        )
        is None
    )


async def test_events_fields_and_rules_are_counted(upstream, start_proxy) -> None:
    running = await start_proxy(upstream.url)
    record = load_records("legacy-players.jsonl")[1]  # KMS channel page
    response = await send_raw(
        running.ports[0], record.to_bytes((("X-Remote-User", "dana"),))
    )
    assert 200 == response.status

    def sample(name: str, **labels: str) -> float | None:
        return running.app.metrics.registry.get_sample_value(name, labels)

    assert 1 == sample("kstats_requests_total", kind="stats", code="200")
    assert 1 == sample("kstats_events_total", api="stats", event_type="9")
    assert 1 == sample("kstats_rule_matches_total", rule="mediaspace")
    assert 1 == sample("kstats_enrichments_total", field="userId", source="header")
    assert 1 == sample(
        "kstats_enrichments_total", field="applicationName", source="value"
    )
    assert 1 == sample(
        "kstats_enrichments_total", field="playbackContext", source="page"
    )
    assert 1 == sample("kstats_upstream_request_duration_seconds_count", kind="stats")
