"""The admin listener: each metric moving as traffic says, readiness, /status, logs.

A real proxy on 127.0.0.1 (``start_proxy``) in front of the stand-in
Kaltura; the admin port is read over HTTP as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ProxyFactory, Upstream
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.accesslog import AccessLog
from proxy.admin import Readiness, make_admin_app
from proxy.kaltura.ks import make_ks_v1
from proxy.serve import RunningProxy

EVENT = (
    "/api_v3/index.php?service=stats&action=collect&event:eventType=3"
    "&event:partnerId=1234&event:entryId=0_abcd1234"
)
RULES = """
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "course"
when.page = 'lms\\.example\\.edu'
userId = [{ header = "X-Remote-User" }]
applicationName = [{ value = "LMS" }]
playbackContext = [
  { page = 'course=(\\w+)' },
  { value = "12345" },
]
"""
PAGE = "https://lms.example.edu/view?course=BIO42"


async def admin_get(proxy: RunningProxy, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{proxy.ports[1]}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def samples(proxy: RunningProxy) -> dict[tuple[str, frozenset[Any]], float]:
    """Every sample of /metrics, as Prometheus would parse it."""
    _, text = await admin_get(proxy, "/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def send(proxy: RunningProxy, target: str = EVENT, **headers: str) -> int:
    url = f"http://127.0.0.1:{proxy.ports[0]}{target}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers) as response,
    ):
        await response.read()
        return response.status


@pytest.fixture(name="rules")
def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


async def test_an_enriched_event_moves_requests_events_enrichments_and_matches(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)

    await send(proxy, Referer=PAGE, **{"X-Remote-User": "ann"})

    found = await samples(proxy)
    assert 1 == value(found, "kstats_requests_total", kind="stats", code="200")
    assert 1 == value(found, "kstats_events_total", api="stats", event_type="3")
    assert 1 == value(found, "kstats_rule_matches_total", rule="course")
    for field, source in [
        ("userId", "header"),
        ("applicationName", "value"),
        ("playbackContext", "value"),  # 'course=42'... is not an integer id
    ]:
        assert 1 == value(found, "kstats_enrichments_total", field=field, source=source)
    assert 1 == value(
        found, "kstats_enrichments_total", field="playbackContext", source="invalid"
    )
    count = "kstats_upstream_request_duration_seconds_count"
    assert 1 == value(found, count, kind="stats")


async def test_an_event_still_missing_a_field_is_counted_as_none(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)

    await send(proxy, Referer=PAGE)  # no gateway header: no user

    found = await samples(proxy)
    assert 1 == value(found, "kstats_enrichments_total", field="userId", source="none")


async def test_a_users_ks_is_counted_as_the_source_of_the_user(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    ks = make_ks_v1(partner_id=1234, secret="s" * 32, user_id="kim", expiry=2**31 - 1)

    await send(proxy, f"{EVENT}&ks={ks}", Referer=PAGE)

    found = await samples(proxy)
    assert 1 == value(found, "kstats_enrichments_total", field="userId", source="ks")


async def test_an_upstream_failure_and_a_rejected_request_are_counted(
    start_proxy: ProxyFactory, rules: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    proxy = await start_proxy(f"http://127.0.0.1:{closed}", rules=rules)

    assert 502 == await send(proxy, Referer=PAGE)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
    writer.write(b"CONNECT kaltura.com:443 HTTP/1.1\r\nHost: kaltura.com\r\n\r\n")
    await reader.readline()
    writer.close()

    found = await samples(proxy)
    assert 1 == value(found, "kstats_upstream_failures_total", reason="connect")
    assert 1 == value(found, "kstats_rejected_requests_total", reason="connect")
    assert 1 == value(found, "kstats_requests_total", kind="stats", code="502")


async def test_a_reload_is_counted_and_the_rules_hash_follows(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    before = proxy.app.rules.digest

    rules.write_text(RULES.replace('"LMS"', '"Campus LMS"'))
    assert await proxy.watcher.reload_now()

    found = await samples(proxy)
    assert 1 == value(found, "kstats_rules_reloads_total", result="success")
    assert 0 == value(found, "kstats_rules_info", hash=before)
    assert 1 == value(found, "kstats_rules_info", hash=proxy.app.rules.digest)


async def test_process_metrics_are_exported(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    found = await samples(proxy)
    assert value(found, "process_resident_memory_bytes") > 10 * 2**20


async def test_readyz_is_503_before_the_rules_load_and_while_draining() -> None:
    readiness = Readiness()
    app = make_admin_app(CollectorRegistry(), readiness)
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        starting = await client.get("/readyz")
        assert (503, "not ready: rules not loaded\n") == (
            starting.status,
            await starting.text(),
        )
        assert 503 == (await client.get("/status")).status
        assert 200 == (await client.get("/healthz")).status

        readiness.rules_loaded = True
        assert 200 == (await client.get("/readyz")).status
        readiness.draining = True
        draining = await client.get("/readyz")
        assert (503, "not ready: draining\n") == (
            draining.status,
            await draining.text(),
        )


async def test_a_stopping_proxy_says_503_on_readyz_while_it_drains(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    assert 200 == (await admin_get(proxy, "/readyz"))[0]

    stopping = asyncio.ensure_future(proxy.stop(0.5))
    await asyncio.sleep(0)  # the stop has begun: readiness off first
    assert proxy.readiness.draining
    await stopping


async def test_status_shows_coverage_per_field_api_and_rule(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    await send(proxy, Referer=PAGE, **{"X-Remote-User": "ann"})
    await send(proxy, Referer=PAGE)

    status, page = await admin_get(proxy, "/status")

    assert 200 == status
    assert "<h2>Per rule (events the rule matched)</h2>" in page
    # two events: every one with an application and a category, half a user
    assert page.count('aria-label="100.0%"') == 2 * 3  # all, api, rule rows
    assert page.count('aria-label="50.0%"') == 3
    assert "<td>course</td>" in page and "<td>stats</td>" in page
    assert "http" not in page.replace('<html lang="en">', "")  # no external asset


async def test_default_logs_name_no_user_cookie_or_ks(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    stream = io.BytesIO()
    proxy.app.access_log = AccessLog(stream)
    ks = make_ks_v1(partner_id=1234, secret="s" * 32, user_id="0", expiry=2**31 - 1)

    await send(
        proxy,
        f"{EVENT}&ks={ks}",
        Referer=PAGE,
        Cookie="MoodleSession=c00k13v4lu3",
        **{"X-Remote-User": "ann.secret@example.edu", "X-Request-Id": "req-42"},
    )
    proxy.app.access_log.flush()

    text = stream.getvalue().decode()
    line = json.loads(text)
    assert "req-42" == line["request_id"]
    assert ["userId:header", "applicationName:value", "playbackContext:value"] == (
        line["added"]
    )
    assert isinstance(line["upstream_ms"], float)
    for secret in ("ann.secret", "c00k13v4lu3", ks[:20]):
        assert secret not in text


async def test_log_sensitive_adds_the_values_to_the_access_line(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules, log_sensitive=True)
    stream = io.BytesIO()
    proxy.app.access_log = AccessLog(stream)

    await send(proxy, Referer=PAGE, **{"X-Remote-User": "ann"})
    proxy.app.access_log.flush()

    line = json.loads(stream.getvalue())
    assert {"field": "userId", "value": "ann"} in line["values"]


async def test_a_player_that_hangs_up_mid_download_logs_nothing_above_debug(
    upstream: Upstream,
    start_proxy: ProxyFactory,
    rules: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules)
    caplog.clear()  # what start-up said is not the point here
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
    writer.write(b"GET /p/1234/serveFlavor/big HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)

    loud = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert [] == [(r.name, r.getMessage()) for r in loud]
