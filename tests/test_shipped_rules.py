"""Each shipped rules file fills exactly what its integration lacks.

The recorded traffic of every legacy integration (``legacy-players.jsonl``)
goes through a proxy running the shipped rules, with the sites' who-am-I
pages served by stand-ins (:mod:`proxy.legacy_standin`, the lookups' site
addresses pointed at them) and a stand-in Kaltura that knows the entry's
categories and checks the proxy's admin KS. No SSO gateway header is sent
here: ``test_fixtures_replay.py`` covers that shape.

What each integration sends (INTEGRATIONS.md section 0): KMS 3 and the
SharePoint extension v2 none of the three values, Moodle v1 none,
Blackboard v2 and Sakai only the user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from conftest import ProxyFactory, Upstream
from support import RULES, Record, load_records, send_raw

from proxy.kaltura.ks import AdminSecrets
from proxy.legacy_standin import LegacySessions, make_legacy_app, point_lookups_at

SECRETS = AdminSecrets({1234: ["0123456789abcdef0123456789abcdef"]})
RECORDS = {record.label: record for record in load_records("legacy-players.jsonl")}

# the entry of every record is in one channel per application
CATEGORIES = {
    86091: "MediaSpace>site>channels>Biology 101",
    86201: "Moodle>site>channels>42",
    86401: "Blackboard>site>channels>_123_1",
    86501: "MediaSpace>site>galleries>Science",
}
FIELDS = ("userId", "applicationId", "contextId")

# label -> the three values Kaltura gets (as the stand-in decodes the
# query once: mwEmbed's own values stay encoded once more), and which of
# them the proxy added
EXPECTED: dict[str, tuple[dict[str, str | None], set[str]]] = {
    "mwembed-kms3-play-no-fields": (
        {"userId": None, "applicationId": "MediaSpace", "contextId": "86091"},
        {"applicationId", "contextId"},  # no user source without a gateway
    ),
    "mwembed-kms3-share-no-fields": (
        {"userId": None, "applicationId": "MediaSpace", "contextId": "86091"},
        {"applicationId", "contextId"},
    ),
    "mwembed-moodle-v1-widget-loaded": (
        {"userId": "demo.user", "applicationId": "Moodle", "contextId": "86201"},
        {"userId", "applicationId", "contextId"},
    ),
    "mwembed-blackboard-v2-play-user-only": (
        {
            "userId": "bob%40example.edu",
            "applicationId": "Blackboard",
            "contextId": "86401",
        },
        {"applicationId", "contextId"},
    ),
    "mwembed-sakai-v2-quartile-user-only": (
        {"userId": "carol", "applicationId": "Sakai", "contextId": "86301"},
        {"applicationId", "contextId"},
    ),
    "mwembed-moodle-v2-all-fields": (
        {
            "userId": "alice%40example.edu",
            "applicationId": "Moodle",
            "contextId": "86091",
        },
        set(),
    ),
    "kdp3-sharepoint-v2-play-widget-ks": (
        {
            "userId": "jdoe@example.edu",
            "applicationId": "SharePoint",
            "contextId": "86101",
        },
        {"userId", "applicationId", "contextId"},
    ),
    "kdp3-sharepoint-v2-media-loaded-widget-ks": (
        {
            "userId": "jdoe@example.edu",
            "applicationId": "SharePoint",
            "contextId": "86101",
        },
        {"userId", "applicationId", "contextId"},
    ),
}


@pytest.fixture(name="sessions")
async def _sessions() -> AsyncIterator[tuple[LegacySessions, str]]:
    sessions = LegacySessions(
        moodle={"r4nd0m5e55i0n1d": "demo.user"},
        sharepoint={
            "77u/PD94bWwgdmVyc2lvbj0iMS4wIj8+PFNQPjA": (
                "i:0#.f|membership|jdoe@example.edu"
            )
        },
    )
    runner = web.AppRunner(make_legacy_app(sessions), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield sessions, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture(name="kaltura")
def _kaltura(upstream: Upstream) -> Upstream:
    upstream.standin.secrets = SECRETS
    upstream.standin.categories.update(CATEGORIES)
    upstream.standin.entry_categories["0_abcd1234"] = sorted(CATEGORIES)
    return upstream


async def run_record(
    record: Record,
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    sessions: tuple[LegacySessions, str],
    tmp_path: Path,
) -> dict[str, str | None]:
    rules = point_lookups_at(RULES, sessions[1], tmp_path / "rules")
    proxy = await start_proxy(kaltura.url, rules=rules, admin_secrets=SECRETS)

    response = await send_raw(proxy.ports[0], record.to_bytes())

    assert 200 == response.status
    (collect,) = kaltura.standin.calls("stats", "collect")
    event = collect.params["event"]
    return {name: event.get(name) for name in FIELDS}


@pytest.mark.parametrize("label", sorted(EXPECTED))
async def test_each_integration_gains_exactly_the_fields_it_lacks(
    label: str,
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    sessions: tuple[LegacySessions, str],
    tmp_path: Path,
) -> None:
    record = RECORDS[label]
    query = dict(parse_qsl(record.raw_path.partition("?")[2]))
    before = {name: query.get(f"event:{name}") for name in FIELDS}
    expected, added = EXPECTED[label]

    after = await run_record(record, kaltura, start_proxy, sessions, tmp_path)

    assert expected == after
    gained = {name for name in FIELDS if before[name] is None and after[name]}
    assert added == gained
    assert all(after[n] == before[n] for n in FIELDS if before[n] is not None)


async def test_the_moodle_lookup_carries_only_moodles_session_cookie(
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    sessions: tuple[LegacySessions, str],
    tmp_path: Path,
) -> None:
    record = RECORDS["mwembed-moodle-v1-widget-loaded"]
    await run_record(record, kaltura, start_proxy, sessions, tmp_path)

    ((application, headers),) = sessions[0].received
    assert "moodle" == application
    assert "MoodleSession=r4nd0m5e55i0n1d" == headers["Cookie"]


async def test_the_sharepoint_lookup_asks_for_json_with_the_fedauth_cookies(
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    sessions: tuple[LegacySessions, str],
    tmp_path: Path,
) -> None:
    record = RECORDS["kdp3-sharepoint-v2-play-widget-ks"]
    await run_record(record, kaltura, start_proxy, sessions, tmp_path)

    ((application, headers),) = sessions[0].received
    assert "sharepoint" == application
    assert headers["Accept"] == "application/json;odata=verbose"
    assert headers["Cookie"].startswith("FedAuth=")
    assert "ASP.NET_SessionId" not in headers["Cookie"]


async def test_a_page_outside_the_known_applications_gets_the_gateway_user_and_host(
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    sessions: tuple[LegacySessions, str],
    tmp_path: Path,
) -> None:
    # the catch-all rule: a non-Kaltura page with an SSO gateway in front
    record = RECORDS["mwembed-kms3-play-no-fields"]
    page = "https%253A%252F%252Fwww.example.org%252Flectures%252Fweek1"
    raw_path = record.raw_path.replace(
        record.raw_path.split("event:referrer=")[1], page
    )
    headers = [
        (name, "www.example.org" if name == "Host" else value)
        for name, value in record.headers
    ] + [("X-Forwarded-User", "frank")]
    other = replace(record, raw_path=raw_path, headers=headers)

    after = await run_record(other, kaltura, start_proxy, sessions, tmp_path)

    assert {"userId": "frank", "applicationId": "www.example.org"}.items() <= (
        after.items()
    )
