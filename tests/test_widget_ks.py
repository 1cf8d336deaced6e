"""A widget KS for events that leave with a user but no KS (SPEC section 3).

The reports pipeline records an event without a KS as "Unknown" whatever
its userId (PROTOCOL.md 1.5), so the proxy asks Kaltura for a widget KS
of the event's partner, keeps it, and attaches it.
"""

from __future__ import annotations

import time
from pathlib import Path

from conftest import ProxyFactory, Upstream
from prometheus_client import CollectorRegistry
from test_remote import SECRETS, collected, send_event

from proxy.kaltura.ks import make_ks_v1, parse_ks
from proxy.metrics import Metrics
from proxy.remote import RemoteServices
from proxy.rules.model import KalturaSettings

USER_EVENT = (
    "/api_v3/index.php?service=stats&action=collect&event:eventType=3"
    "&event:partnerId=1234&event:entryId=0_abcd1234&event:userId=carol"
)


def rules(tmp_path: Path, widget_ks: str = "true") -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(
        f"""
[kaltura]
partner_id = 1234
widget_ks = {widget_ks}

[[rule]]
name = "sso"
userId = [{{ header = "X-Remote-User" }}]
"""
    )
    return path


def ks_of(upstream: Upstream, index: int = -1) -> str | None:
    return upstream.standin.calls("stats", "collect")[index].params.get("ks")


async def test_an_event_with_a_user_and_no_ks_gets_a_widget_ks_of_its_partner(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    upstream.standin.secrets = SECRETS  # so stats.collect checks the KS
    proxy = await start_proxy(upstream.url, rules=rules(tmp_path))

    status, _ = await send_event(proxy, USER_EVENT)

    assert 200 == status
    ks = ks_of(upstream)
    assert ks is not None
    session = parse_ks(ks, SECRETS)
    assert session is not None and session.is_widget and session.verified
    assert 1234 == session.partner_id
    (call,) = upstream.standin.calls("session", "startWidgetSession")
    assert "_1234" == call.params["widgetId"]


async def test_an_added_user_brings_a_widget_ks_too(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules(tmp_path))
    target = USER_EVENT.replace("&event:userId=carol", "")

    await send_event(proxy, target)
    await send_event(proxy, target, **{"X-Remote-User": "dave"})

    assert ks_of(upstream, 0) is None  # no user: nothing to attribute
    assert ks_of(upstream, 1) is not None
    assert "dave" == collected(upstream)[1]["userId"]


async def test_one_widget_ks_serves_every_event_of_a_partner(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules(tmp_path))

    for _ in range(3):
        await send_event(proxy, USER_EVENT)
    await send_event(proxy, USER_EVENT.replace("partnerId=1234", "partnerId=5678"))

    calls = upstream.standin.calls("session", "startWidgetSession")
    assert ["_1234", "_5678"] == [c.params["widgetId"] for c in calls]
    kses = [ks_of(upstream, i) for i in range(3)]
    assert kses[0] is not None and len(set(kses)) == 1


async def test_an_event_with_its_own_ks_keeps_it(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    own = make_ks_v1(
        partner_id=1234, secret="s" * 32, user_id="0", expiry=int(time.time()) + 60
    )
    proxy = await start_proxy(upstream.url, rules=rules(tmp_path))

    await send_event(proxy, f"{USER_EVENT}&ks={own}")

    assert own == ks_of(upstream)
    assert [] == upstream.standin.calls("session", "startWidgetSession")


async def test_widget_ks_false_attaches_nothing_and_forwards_byte_for_byte(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules(tmp_path, "false"))

    await send_event(proxy, USER_EVENT)

    (collect,) = upstream.standin.calls("stats", "collect")
    assert USER_EVENT == collect.target
    assert [] == upstream.standin.calls("session", "startWidgetSession")


async def test_without_a_widget_ks_to_be_had_the_event_goes_on_without_one(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    # the Kaltura service the proxy asks is down; the upstream is not
    path = rules(tmp_path)
    path.write_text(
        path.read_text().replace(
            "partner_id = 1234\n",
            'partner_id = 1234\nservice_url = "http://127.0.0.1:9"\n',
        )
    )
    proxy = await start_proxy(upstream.url, rules=path)

    for _ in range(2):
        status, _ = await send_event(proxy, USER_EVENT)
        assert 200 == status

    assert [None, None] == [ks_of(upstream, i) for i in range(2)]
    assert "carol" == collected(upstream)[0]["userId"]
    # both count as failed: the call, then the failure kept for a while
    failed = proxy.app.metrics.source_calls.value("widget_ks", "failed")
    assert 2 == failed


async def test_a_widget_ks_is_renewed_before_it_expires(upstream: Upstream) -> None:
    now = [0.0]
    services = RemoteServices(
        upstream_url=upstream.url,
        admin_secrets=SECRETS,
        metrics=Metrics(CollectorRegistry()),
        clock=lambda: now[0],
    )
    kaltura = KalturaSettings(partner_id=1234)
    try:
        first = await services.widget_ks(kaltura, 1234)
        now[0] += 23 * 3600 - 1
        assert first == await services.widget_ks(kaltura, 1234)
        assert 1 == len(upstream.standin.calls("session", "startWidgetSession"))

        # an hour before the 24 hours asked for are up, a new one
        now[0] += 2
        second = await services.widget_ks(kaltura, 1234)
    finally:
        await services.close()

    assert second is not None and second != first
    calls = upstream.standin.calls("session", "startWidgetSession")
    assert [86400, 86400] == [c.params["expiry"] for c in calls]
