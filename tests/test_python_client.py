"""The official Kaltura Python client, pointed at the proxy, talking to the stand-in.

The client (PyPI ``KalturaApiClient``) POSTs JSON bodies whose values are
all strings to ``/api_v3/service/stats/action/collect`` and
``/api_v3/service/multirequest``, and parses the XML answer; it is
synchronous, so each call runs in a thread. A rules file of its own makes
the proxy add a user from a request header the client is told to send, a
fixed application name and a course category from the referrer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from KalturaClient import KalturaClient, KalturaConfiguration
from KalturaClient.Plugins.Core import (
    KalturaCategoryEntryFilter,
    KalturaCategoryFilter,
    KalturaStatsEvent,
    KalturaStatsEventType,
)
from support import PYTHON_CLIENT_RULES

from proxy.kaltura.ks import (
    SESSION_TYPE_ADMIN,
    AdminSecrets,
    make_ks_v1,
    make_ks_v2,
    parse_ks,
)
from proxy.standin import RecordedRequest

pytestmark = pytest.mark.timeout(30)

PARTNER_ID = 1234
ADMIN_SECRET = "testsecret"
USER_HEADER = "X-Portal-User"
HEADER_USER = "jdoe@example.edu"
COURSE_PAGE = "https://moodle.example.edu/course/view.php?id=42"
COURSE_CATEGORY = "86401"

RULES = PYTHON_CLIENT_RULES

T = TypeVar("T")


@pytest.fixture(name="client_rules")
def _client_rules(tmp_path: Path) -> Path:
    path = tmp_path / "python-client.toml"
    path.write_text(RULES)
    return path


def make_client(port: int, *, send_user_header: bool = True) -> KalturaClient:
    config = KalturaConfiguration(serviceUrl=f"http://127.0.0.1:{port}")
    config.requestTimeout = 5
    client = KalturaClient(config)
    if send_user_header:
        client.requestHeaders[USER_HEADER] = HEADER_USER
    return client


def user_ks(expires_in: int = 3600) -> str:
    return make_ks_v1(
        partner_id=PARTNER_ID,
        secret=ADMIN_SECRET,
        user_id="alice@example.edu",
        expiry=int(time.time()) + expires_in,
    )


def stats_event(event_type: int = KalturaStatsEventType.PLAY, **fields: Any) -> Any:
    return KalturaStatsEvent(
        eventType=event_type,
        partnerId=PARTNER_ID,
        entryId="0_abcd1234",
        sessionId="3f0c2b1e-8d7a-4c55-9a51-6b2d0e9f1a77",
        clientVer="2.101",
        referrer=COURSE_PAGE,
        **fields,
    )


async def in_thread(call: Callable[[], T]) -> T:
    """Run a blocking client call off the event loop, bounded in time."""
    return await asyncio.wait_for(asyncio.to_thread(call), timeout=15)


def collect(client: KalturaClient, event: Any) -> Callable[[], Any]:
    return lambda: client.stats.collect(event)


def multirequest(client: KalturaClient, *events: Any) -> Callable[[], Any]:
    def send() -> Any:
        client.startMultiRequest()
        for event in events:
            client.stats.collect(event)
        return client.doMultiRequest()

    return send


def only_forwarded(upstream: Any) -> RecordedRequest:
    """The one call that reached the stand-in (less any widget-KS call)."""
    calls = [
        r
        for r in upstream.standin.received
        if str(r.params.get("service", "")).lower() != "session"
    ]
    assert len(calls) == 1, [c.target for c in calls]
    return calls[0]


def json_body(request: RecordedRequest) -> dict[str, Any]:
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Length") == str(len(request.body))
    document: dict[str, Any] = json.loads(request.body)
    return document


def report_fields(event: dict[str, Any]) -> dict[str, Any]:
    names = ("userId", "applicationId", "contextId")
    return {name: event[name] for name in names if name in event}


async def test_collect_without_user_fields_gains_them_as_json_strings(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0])

    result = await in_thread(collect(client, stats_event()))

    assert result is True
    received = only_forwarded(upstream)
    assert received.target == "/api_v3/service/stats/action/collect"
    event = json_body(received)["event"]
    assert report_fields(event) == {
        "userId": HEADER_USER,
        "applicationId": "PythonClient",
        "contextId": COURSE_CATEGORY,
    }
    # the client's own values are untouched strings too
    assert event["partnerId"] == str(PARTNER_ID)
    assert event["eventType"] == str(KalturaStatsEventType.PLAY)


async def test_collect_with_own_user_fields_keeps_them(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0])
    event = stats_event(
        userId="alice@example.edu", applicationId="moodle", contextId=42
    )

    result = await in_thread(collect(client, event))

    assert result is True
    forwarded = json_body(only_forwarded(upstream))["event"]
    assert report_fields(forwarded) == {
        "userId": "alice@example.edu",
        "applicationId": "moodle",
        "contextId": "42",
    }


async def test_collect_without_the_user_header_gains_no_user(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0], send_user_header=False)

    result = await in_thread(collect(client, stats_event()))

    assert result is True
    event = json_body(only_forwarded(upstream))["event"]
    assert report_fields(event) == {
        "applicationId": "PythonClient",
        "contextId": COURSE_CATEGORY,
    }


async def test_multirequest_enriches_each_collect_sub_request(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0])
    own_user = stats_event(
        KalturaStatsEventType.MEDIA_LOADED, userId="alice@example.edu"
    )

    results = await in_thread(multirequest(client, own_user, stats_event()))

    assert results == ["1", "1"]
    received = only_forwarded(upstream)
    assert received.target == "/api_v3/service/multirequest"
    body = json_body(received)
    assert report_fields(body["0"]["event"]) == {
        "userId": "alice@example.edu",
        "applicationId": "PythonClient",
        "contextId": COURSE_CATEGORY,
    }
    assert report_fields(body["1"]["event"]) == {
        "userId": HEADER_USER,
        "applicationId": "PythonClient",
        "contextId": COURSE_CATEGORY,
    }


async def test_user_ks_arrives_byte_identical_and_no_user_id_is_added(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    ks = user_ks()
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0])
    client.setKs(ks)

    result = await in_thread(collect(client, stats_event()))

    assert result is True
    received = only_forwarded(upstream)
    body = json_body(received)
    assert body["ks"] == ks
    assert received.params["ks"] == ks
    assert report_fields(body["event"]) == {
        "applicationId": "PythonClient",
        "contextId": COURSE_CATEGORY,
    }


async def test_user_ks_in_multirequest_arrives_byte_identical_in_each_sub_request(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    ks = user_ks()
    running = await start_proxy(upstream.url, rules=client_rules)
    client = make_client(running.ports[0])
    client.setKs(ks)

    results = await in_thread(multirequest(client, stats_event(), stats_event()))

    assert results == ["1", "1"]
    body = json_body(only_forwarded(upstream))
    for index in ("0", "1"):
        assert body[index]["ks"] == ks
        assert "userId" not in body[index]["event"]


async def test_user_ks_v2_is_read_with_the_admin_secret_and_decides_the_user(
    upstream: Any, start_proxy: Any, client_rules: Path
) -> None:
    ks = make_ks_v2(
        partner_id=PARTNER_ID,
        secret=ADMIN_SECRET,
        user_id="alice@example.edu",
        expiry=int(time.time()) + 3600,
        privileges="sview:*",
    )
    secrets = AdminSecrets({PARTNER_ID: [ADMIN_SECRET]})
    running = await start_proxy(upstream.url, rules=client_rules, admin_secrets=secrets)
    client = make_client(running.ports[0])
    client.setKs(ks)

    result = await in_thread(collect(client, stats_event()))

    assert result is True
    body = json_body(only_forwarded(upstream))
    assert body["ks"] == ks
    assert "userId" not in body["event"]


# -- the stand-in's own answers, read by the real client -------------------------


async def test_the_real_client_reads_the_standins_category_and_widget_answers(
    upstream: Any,
) -> None:
    # the shapes the proxy's Kaltura calls rely on, as Kaltura's client reads them
    upstream.standin.secrets = AdminSecrets({PARTNER_ID: [ADMIN_SECRET]})
    upstream.standin.categories[86091] = "Moodle>site>channels>42"
    upstream.standin.entry_categories["0_abcd1234"] = [86091]
    config = KalturaConfiguration(serviceUrl=upstream.url)
    client = KalturaClient(config)

    widget = await in_thread(
        lambda: client.session.startWidgetSession(f"_{PARTNER_ID}")
    )
    client.setKs(
        make_ks_v2(
            partner_id=PARTNER_ID,
            secret=ADMIN_SECRET,
            user_id="admin",
            session_type=SESSION_TYPE_ADMIN,
            expiry=int(time.time()) + 3600,
        )
    )
    by_name = KalturaCategoryFilter()
    by_name.fullNameEqual = "Moodle>site>channels>42"
    categories = await in_thread(lambda: client.category.list(by_name))
    by_entry = KalturaCategoryEntryFilter()
    by_entry.entryIdEqual = "0_abcd1234"
    links = await in_thread(lambda: client.categoryEntry.list(by_entry))

    session = parse_ks(widget.ks, upstream.standin.secrets)
    assert session is not None and session.is_widget
    assert [86091] == [c.id for c in categories.objects]
    assert ["Moodle>site>channels>42"] == [c.fullName for c in categories.objects]
    assert [(86091, "0_abcd1234")] == [(e.categoryId, e.entryId) for e in links.objects]
