"""The model of the legacy reports pipeline: each of its rules (PROTOCOL.md 1.5)."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from proxy.kaltura.ks import AdminSecrets, make_ks_v1, make_ks_v2
from proxy.kaltura.session import KsReader
from proxy.pipeline import Credit, Verdict, credit

SECRET = "0123456789abcdef0123456789abcdef"
COLLECT = "/api_v3/index.php?service=stats&action=collect"
EVENT = f"{COLLECT}&event:eventType=3&event:partnerId=1234"
LATER = int(time.time()) + 3600


def ks_v1(user: str, partner: int = 1234) -> str:
    return quote(
        make_ks_v1(partner_id=partner, secret=SECRET, user_id=user, expiry=LATER),
        safe="",
    )


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        pytest.param("POST", EVENT, Credit.UNSEEN, id="a-post-is-never-read"),
        pytest.param(
            "GET",
            "/api_v3/index.php?service=multirequest&1:service=stats&1:action=collect"
            "&1:event:eventType=3",
            Credit.UNSEEN,
            id="a-multirequest-is-never-read",
        ),
        pytest.param(
            "GET",
            f"{COLLECT}&event:eventType=12",
            Credit.SKIPPED,
            id="buffer-start-skipped",
        ),
        pytest.param(
            "GET",
            f"{COLLECT}&event:eventType=1",
            Credit.SKIPPED,
            id="widget-loaded-skipped",
        ),
        pytest.param(
            "GET", f"{EVENT}&event:userId=ann", Credit.UNKNOWN, id="no-ks-is-unknown"
        ),
        pytest.param(
            "GET",
            f"{EVENT}&event:userId=ann&ks={ks_v1('0')}",
            Credit.VIEWER,
            id="widget-ks-and-user",
        ),
        pytest.param(
            "GET", f"{EVENT}&ks={ks_v1('0')}", Credit.UNKNOWN, id="widget-ks-no-user"
        ),
        pytest.param(
            "GET",
            f"{EVENT}&event:userId=ann&ks={ks_v1('0', 99)}",
            Credit.UNKNOWN,
            id="ks-of-another-partner",
        ),
    ],
)
def test_each_rule_of_the_pipeline(method: str, target: str, expected: Credit) -> None:
    assert expected is credit(method, target, KsReader()).credit


def test_a_users_ks_wins_over_the_events_user_id() -> None:
    target = f"{EVENT}&event:userId=mallory&ks={ks_v1('bob')}"
    assert Verdict(Credit.VIEWER, "bob") == credit("GET", target, KsReader())


def test_the_request_line_is_unescaped_once() -> None:
    target = f"{EVENT}&event:userId=ann%2540example.edu&ks={ks_v1('0')}"
    assert "ann%40example.edu" == credit("GET", target, KsReader()).user


def test_a_v2_ks_needs_the_partners_secret() -> None:
    ks = quote(
        make_ks_v2(partner_id=1234, secret=SECRET, user_id="kim", expiry=LATER), safe=""
    )
    target = f"{EVENT}&ks={ks}"
    assert Credit.UNKNOWN is credit("GET", target, KsReader()).credit
    reader = KsReader(AdminSecrets({1234: [SECRET]}))
    assert Verdict(Credit.VIEWER, "kim") == credit("GET", target, reader)


def test_a_widget_ks_the_proxy_would_attach_is_assumed_when_asked() -> None:
    target = f"{EVENT}&event:userId=ann"
    assert Credit.VIEWER is credit("GET", target, KsReader(), widget_ks=True).credit
