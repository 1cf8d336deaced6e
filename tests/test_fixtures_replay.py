"""The fixtures' recorded traffic, and the other event forms, through a running proxy.

Each test starts the real proxy (shipped ``rules/`` unless it writes its
own) in front of the stand-in Kaltura, sends requests on a raw socket, and
checks what the stand-in received and what the client got back.

Query and form bodies are checked on their raw bytes: the upstream's target
must be the original one followed only by the appended ``&key=value``
segments, each in the client's encoding (mwEmbed v2 twice, KDP3 once).
JSON bodies are compared as documents, value types included.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote

import pytest
from support import RawResponse, Record, load_records, send_raw

import proxy.standin
from proxy.kaltura.ks import make_ks_v1, parse_ks
from proxy.standin import RecordedRequest

pytestmark = pytest.mark.timeout(30)

LEGACY = load_records("legacy-players.jsonl")
PYTHON = load_records("python-client.jsonl")
ALL_RECORDS = [*LEGACY, *PYTHON]


def by_label(records: list[Record]) -> dict[str, Record]:
    return {record.label: record for record in records}


# -- what each scenario's SSO gateway sets, and what the shipped rules add ------

Headers = tuple[tuple[str, str], ...]

KMS_GATEWAY: Headers = (("X-Remote-User", "demo.user@example.edu"),)
MOODLE_GATEWAY: Headers = (("X-Remote-User", "demo.user@example.edu"),)
SHAREPOINT_GATEWAY: Headers = (
    ("X-Forwarded-User", "i:0#.f|membership|jdoe@example.edu"),
)
# a gateway header on pages whose player sends its own user: the event's wins
OTHER_GATEWAY: Headers = (("X-Forwarded-User", "gateway.user@example.edu"),)


@dataclasses.dataclass(frozen=True)
class Expected:
    """The raw segments the proxy appends, with and without the SSO headers."""

    gateway: Headers
    with_gateway: dict[str, str]
    without_gateway: dict[str, str]


LEGACY_EXPECTED: dict[str, Expected] = {
    # the media page holds no category id, so no contextId
    "mwembed-kms3-play-no-fields": Expected(
        KMS_GATEWAY,
        {
            "event:userId": "demo.user%2540example.edu",
            "event:applicationId": "MediaSpace",
        },
        {"event:applicationId": "MediaSpace"},
    ),
    "mwembed-kms3-share-no-fields": Expected(
        KMS_GATEWAY,
        {
            "event:userId": "demo.user%2540example.edu",
            "event:applicationId": "MediaSpace",
            "event:contextId": "86091",
        },
        {"event:applicationId": "MediaSpace", "event:contextId": "86091"},
    ),
    # the moodle rule cuts the eppn scope
    "mwembed-moodle-v1-widget-loaded": Expected(
        MOODLE_GATEWAY,
        {"event:userId": "demo.user", "event:applicationId": "Moodle"},
        {"event:applicationId": "Moodle"},
    ),
    # the course id is not in this record's Referer: no contextId
    "mwembed-blackboard-v2-play-user-only": Expected(
        OTHER_GATEWAY,
        {"event:applicationId": "Blackboard"},
        {"event:applicationId": "Blackboard"},
    ),
    "mwembed-sakai-v2-quartile-user-only": Expected(
        OTHER_GATEWAY,
        {"event:applicationId": "Sakai", "event:contextId": "86301"},
        {"event:applicationId": "Sakai", "event:contextId": "86301"},
    ),
    "mwembed-moodle-v2-all-fields": Expected(MOODLE_GATEWAY, {}, {}),
    "kdp3-sharepoint-v2-play-widget-ks": Expected(
        SHAREPOINT_GATEWAY,
        {
            "event:userId": "jdoe%40example.edu",
            "event:applicationId": "SharePoint",
            "event:contextId": "86101",
        },
        {"event:applicationId": "SharePoint", "event:contextId": "86101"},
    ),
    "kdp3-sharepoint-v2-media-loaded-widget-ks": Expected(
        SHAREPOINT_GATEWAY,
        {
            "event:userId": "jdoe%40example.edu",
            "event:applicationId": "SharePoint",
            "event:contextId": "86101",
        },
        {"event:applicationId": "SharePoint", "event:contextId": "86101"},
    ),
}

# The Python client's records come from 127.0.0.1, which only the catch-all
# "other-pages" rule matches: the user from X-Forwarded-User, the
# application from the referrer's host. Keys: the sub-request ("" for a
# single call) -> the event values added to it.
PythonAdded = dict[str, dict[str, str]]
PAGE_HOST = "moodle.example.edu"
PYTHON_GATEWAY: Headers = (("X-Forwarded-User", "jdoe@example.edu"),)


@dataclasses.dataclass(frozen=True)
class PythonExpected:
    with_gateway: PythonAdded
    without_gateway: PythonAdded


PYTHON_EXPECTED: dict[str, PythonExpected] = {
    "py-a1-collect-with-user-fields-no-ks": PythonExpected({}, {}),
    "py-a2-collect-without-user-fields-no-ks": PythonExpected(
        {"": {"userId": "jdoe@example.edu", "applicationId": PAGE_HOST}},
        {"": {"applicationId": PAGE_HOST}},
    ),
    "py-b1-collect-with-user-fields-ks-v1": PythonExpected({}, {}),
    "py-b2-collect-with-user-fields-ks-v2": PythonExpected({}, {}),
    # the KS names alice: the user is the KS's, no userId is added
    "py-b3-collect-without-user-fields-ks-v1": PythonExpected(
        {"": {"applicationId": PAGE_HOST}},
        {"": {"applicationId": PAGE_HOST}},
    ),
    "py-c1-multirequest-2x-collect-no-ks": PythonExpected(
        {"1": {"userId": "jdoe@example.edu", "applicationId": PAGE_HOST}},
        {"1": {"applicationId": PAGE_HOST}},
    ),
    "py-c2-multirequest-2x-collect-ks-v1": PythonExpected({}, {}),
}


def test_expectations_cover_every_fixture_record() -> None:
    assert set(LEGACY_EXPECTED) == {r.label for r in LEGACY}
    assert set(PYTHON_EXPECTED) == {r.label for r in PYTHON}


# -- helpers ---------------------------------------------------------------------


def records_param(records: list[Record]) -> Any:
    return pytest.mark.parametrize("record", records, ids=lambda r: r.label)


gateway_param = pytest.mark.parametrize(
    "with_gateway", [True, False], ids=["sso-headers", "no-sso-headers"]
)


def upstream_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def forwarded_calls(upstream: Any) -> list[RecordedRequest]:
    """What reached the stand-in, less any widget-KS call the proxy makes itself."""
    return [
        r
        for r in upstream.standin.received
        if str(r.params.get("service", "")).lower() != "session"
    ]


def only_forwarded(upstream: Any) -> RecordedRequest:
    calls = forwarded_calls(upstream)
    assert len(calls) == 1, [c.target for c in calls]
    return calls[0]


def appended_segments(original: str, received: str, *, had_ks: bool) -> dict[str, str]:
    """The raw ``key=value`` segments appended to ``original``; asserts no other change.

    A ``ks`` segment is left out when the original had none: attaching a
    widget KS is SPEC 3's business, judged by its own tests.
    """
    assert received.startswith(original), (original, received)
    rest = received[len(original) :]
    if not rest:
        return {}
    assert rest.startswith("&"), rest
    segments = dict(segment.split("=", 1) for segment in rest[1:].split("&"))
    if not had_ks:
        # the call's own ks, or a multirequest sub-request's ``N:ks``
        for key in [k for k in segments if k.rpartition(":")[2] == "ks"]:
            del segments[key]
    return segments


def without_widget_ks(received: str, original: str) -> str:
    """``received`` less the widget KS the proxy appended, if it did.

    Attaching a widget KS to an event with a user and no KS is SPEC 3's
    business, judged by its own tests (tests/test_widget_ks.py).
    """
    head, _, value = received.rpartition("&ks=")
    if has_ks_segment(original) or not head:
        return received
    session = parse_ks(unquote(value))
    assert session is not None and session.is_widget, value
    return head


def has_ks_segment(target: str) -> bool:
    query = target.partition("?")[2]
    return any(s.startswith("ks=") for s in query.split("&"))


def gateway_for(record: Record) -> Headers:
    """The SSO headers of ``record``'s demo scenario."""
    if record.label in LEGACY_EXPECTED:
        return LEGACY_EXPECTED[record.label].gateway
    return PYTHON_GATEWAY


def raw_request(method: str, target: str, headers: Headers, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def with_header(record: Record, name: str, value: str) -> Record:
    """``record`` with header ``name`` set to ``value`` in place."""
    headers = tuple(
        (k, value if k.lower() == name.lower() else v) for k, v in record.headers
    )
    return dataclasses.replace(record, headers=headers)


def expected_json_body(original: bytes, added: PythonAdded) -> dict[str, Any]:
    """The original JSON document with ``added`` written into its events."""
    expected: dict[str, Any] = json.loads(original)
    for index, values in added.items():
        container = expected if index == "" else expected[index]
        container["event"].update(values)
    return expected


def received_json_body(request: RecordedRequest, original: bytes) -> dict[str, Any]:
    """The JSON body the stand-in got, less a widget KS the original lacked."""
    document: dict[str, Any] = json.loads(request.body)
    before: dict[str, Any] = json.loads(original)
    for key, call in [("", document), *document.items()]:
        container = before if key == "" else before.get(key)
        lacked_ks = isinstance(container, dict) and "ks" not in container
        if isinstance(call, dict) and lacked_ks and "ks" not in before:
            call.pop("ks", None)
    return document


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


# -- the legacy players' records -------------------------------------------------


@records_param(LEGACY)
@gateway_param
async def test_legacy_record_upstream_gets_exactly_the_missing_fields(
    upstream: Any, start_proxy: Any, record: Record, with_gateway: bool
) -> None:
    expected = LEGACY_EXPECTED[record.label]
    running = await start_proxy(upstream.url)
    gateway = expected.gateway if with_gateway else ()

    response = await send_raw(running.ports[0], record.to_bytes(gateway))

    assert response.status == 200
    received = only_forwarded(upstream)
    added = appended_segments(
        record.raw_path, received.target, had_ks=has_ks_segment(record.raw_path)
    )
    assert added == (
        expected.with_gateway if with_gateway else expected.without_gateway
    )
    assert received.method == "GET"
    assert received.body == b""


@pytest.mark.parametrize(
    ("label", "own_values"),
    [
        (
            "mwembed-moodle-v2-all-fields",
            {
                "userId": "alice%40example.edu",
                "applicationId": "Moodle",
                "contextId": "86091",
            },
        ),
        ("mwembed-blackboard-v2-play-user-only", {"userId": "bob%40example.edu"}),
        ("mwembed-sakai-v2-quartile-user-only", {"userId": "carol"}),
    ],
)
async def test_event_own_values_are_kept_despite_gateway_header(
    upstream: Any, start_proxy: Any, label: str, own_values: dict[str, str]
) -> None:
    record = by_label(LEGACY)[label]
    running = await start_proxy(upstream.url)

    await send_raw(
        running.ports[0],
        record.to_bytes((*OTHER_GATEWAY, ("X-Remote-User", "someone@example.edu"))),
    )

    # as Kaltura reads them: mwEmbed's values still carry their inner encoding
    event = only_forwarded(upstream).params["event"]
    assert {name: event[name] for name in own_values} == own_values


async def test_blackboard_course_in_iframe_referer_gives_context_id(
    upstream: Any, start_proxy: Any
) -> None:
    record = with_header(
        by_label(LEGACY)["mwembed-blackboard-v2-play-user-only"],
        "Referer",
        "https://blackboard.example.edu/webapps/osv-kaltura-BBLEARN/jsp/"
        "BuildPlayer.jsp?course_id=_123_1&entry_id=0_abcd1234",
    )
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], record.to_bytes())

    added = appended_segments(
        record.raw_path, only_forwarded(upstream).target, had_ks=False
    )
    assert added == {"event:applicationId": "Blackboard", "event:contextId": "86201"}


@records_param(LEGACY)
async def test_legacy_record_cookies_do_not_reach_upstream(
    upstream: Any, start_proxy: Any, record: Record
) -> None:
    assert record.header("Cookie")
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], record.to_bytes())

    assert only_forwarded(upstream).header("Cookie") is None


async def test_allow_listed_cookie_alone_reaches_upstream(
    upstream: Any, start_proxy: Any
) -> None:
    record = by_label(LEGACY)["mwembed-kms3-play-no-fields"]
    assert "kms_ctamuls=" in (record.header("Cookie") or "")
    running = await start_proxy(
        upstream.url, forward_cookies=frozenset({"kms_auth_id"})
    )

    await send_raw(running.ports[0], record.to_bytes())

    assert only_forwarded(upstream).header("Cookie") == "kms_auth_id=ldap"


async def direct_answer(upstream: Any, request: bytes) -> RawResponse:
    """What the stand-in answers to ``request`` when no proxy is in between."""
    return await send_raw(upstream_port(upstream.url), request)


def assert_same_answer(through_proxy: RawResponse, direct: RawResponse) -> None:
    assert through_proxy.status == direct.status == 200
    assert through_proxy.body == direct.body
    assert through_proxy.header("Content-Type") == direct.header("Content-Type")
    assert through_proxy.header("Access-Control-Allow-Origin") == "*"


@records_param(LEGACY)
async def test_legacy_player_gets_the_answer_its_format_expects_unchanged(
    upstream: Any, start_proxy: Any, record: Record
) -> None:
    gateway = gateway_for(record)
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], record.to_bytes(gateway))
    direct = await direct_answer(upstream, record.to_bytes(gateway))

    assert_same_answer(response, direct)
    if "&format=1&" in record.raw_path:
        assert response.body == b"true"
        assert (response.header("Content-Type") or "").startswith("application/json")
    else:  # KDP3 sends no format: XML
        assert b"<result>1</result>" in response.body
        assert (response.header("Content-Type") or "").startswith("text/xml")


# -- the Python client's records -------------------------------------------------


@records_param(PYTHON)
@gateway_param
async def test_python_record_upstream_json_gains_exactly_the_missing_fields(
    upstream: Any, start_proxy: Any, record: Record, with_gateway: bool
) -> None:
    expected = PYTHON_EXPECTED[record.label]
    added = expected.with_gateway if with_gateway else expected.without_gateway
    running = await start_proxy(upstream.url)

    response = await send_raw(
        running.ports[0], record.to_bytes(PYTHON_GATEWAY if with_gateway else ())
    )

    assert response.status == 200
    received = only_forwarded(upstream)
    assert received.target == record.raw_path
    assert received.header("Content-Type") == "application/json"
    assert received.header("Content-Length") == str(len(received.body))
    assert received_json_body(received, record.body) == expected_json_body(
        record.body, added
    )
    if not added and "ks" in json.loads(record.body):
        assert received.body == record.body


async def test_python_record_gains_context_id_as_json_string_like_its_other_values(
    upstream: Any, start_proxy: Any, tmp_path: Path
) -> None:
    rules = write_rules(
        tmp_path,
        """
[[rule]]
name = "course-page"
when.host = '^127\\.0\\.0\\.1(:\\d+)?$'
playbackContext = [{ page = 'course/view\\.php\\?id=(\\d+)', table = "courses" }]

[table.courses]
entries = { "42" = 86401 }
""",
    )
    record = by_label(PYTHON)["py-a2-collect-without-user-fields-no-ks"]
    running = await start_proxy(upstream.url, rules=rules)

    await send_raw(running.ports[0], record.to_bytes(PYTHON_GATEWAY))

    received = only_forwarded(upstream)
    event = json.loads(received.body)["event"]
    assert event["contextId"] == "86401"
    assert isinstance(event["partnerId"], str)
    assert "userId" not in event
    assert received.header("Content-Length") == str(len(received.body))


@records_param(PYTHON)
async def test_python_client_gets_the_xml_answer_unchanged(
    upstream: Any, start_proxy: Any, record: Record
) -> None:
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], record.to_bytes(PYTHON_GATEWAY))
    direct = await direct_answer(upstream, record.to_bytes(PYTHON_GATEWAY))

    assert_same_answer(response, direct)
    assert (response.header("Content-Type") or "").startswith("text/xml")
    if "multirequest" in record.raw_path:
        assert b"<result><item>1</item><item>1</item></result>" in response.body
    else:
        assert b"<result>1</result>" in response.body


# -- the KS is never altered -----------------------------------------------------

KS_RECORDS = [r for r in ALL_RECORDS if "ks=" in r.raw_path or b'"ks":' in r.body]


def request_kses(target: str, body: bytes) -> list[str]:
    """Every raw KS of a request: query ``ks=`` segments and JSON ``ks`` values."""
    query = target.partition("?")[2]
    found = [s[3:] for s in query.split("&") if s.startswith("ks=")]
    if body:
        document = json.loads(body)
        containers = [document, *(v for v in document.values() if isinstance(v, dict))]
        found += [c["ks"] for c in containers if "ks" in c]
    return found


@records_param(KS_RECORDS)
async def test_request_ks_reaches_upstream_byte_identical(
    upstream: Any, start_proxy: Any, record: Record
) -> None:
    gateway = gateway_for(record)
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], record.to_bytes(gateway))

    received = only_forwarded(upstream)
    original = request_kses(record.raw_path, record.body)
    assert original
    assert request_kses(received.target, received.body) == original


def test_ks_records_include_the_kdp3_and_python_ks_records() -> None:
    labels = {r.label for r in KS_RECORDS}
    assert labels == {
        "kdp3-sharepoint-v2-play-widget-ks",
        "kdp3-sharepoint-v2-media-loaded-widget-ks",
        "py-b1-collect-with-user-fields-ks-v1",
        "py-b2-collect-with-user-fields-ks-v2",
        "py-b3-collect-without-user-fields-ks-v1",
        "py-c2-multirequest-2x-collect-ks-v1",
    }


# -- policy override -------------------------------------------------------------

OVERRIDE_RULES = """
[[rule]]
name = "blackboard-gateway-user"
when.host = '^blackboard\\.example\\.edu(:\\d+)?$'
userId = [{ header = "X-Remote-User" }]
policy.userId = "override"
"""
BLACKBOARD = by_label(LEGACY)["mwembed-blackboard-v2-play-user-only"]
BLACKBOARD_USER_SEGMENT = "event:userId=bob%2540example.edu"


async def test_override_policy_replaces_event_user_in_place_double_encoded(
    upstream: Any, start_proxy: Any, tmp_path: Path
) -> None:
    assert BLACKBOARD.raw_path.endswith(BLACKBOARD_USER_SEGMENT)
    rules = write_rules(tmp_path, OVERRIDE_RULES)
    running = await start_proxy(upstream.url, rules=rules)

    await send_raw(
        running.ports[0],
        BLACKBOARD.to_bytes((("X-Remote-User", "bob.real@example.edu"),)),
    )

    received = only_forwarded(upstream)
    expected = BLACKBOARD.raw_path.replace(
        BLACKBOARD_USER_SEGMENT, "event:userId=bob.real%2540example.edu"
    )
    assert without_widget_ks(received.target, expected) == expected
    assert received.params["event"]["userId"] == "bob.real%40example.edu"


async def test_override_policy_without_a_rule_value_keeps_event_user(
    upstream: Any, start_proxy: Any, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path, OVERRIDE_RULES)
    running = await start_proxy(upstream.url, rules=rules)

    await send_raw(running.ports[0], BLACKBOARD.to_bytes())

    received = only_forwarded(upstream).target
    assert without_widget_ks(received, BLACKBOARD.raw_path) == BLACKBOARD.raw_path


async def test_override_policy_leaves_a_real_user_ks_and_event_user_alone(
    upstream: Any, start_proxy: Any, tmp_path: Path
) -> None:
    ks = make_ks_v1(
        partner_id=1234,
        secret="testsecret",
        user_id="alice@example.edu",
        expiry=int(time.time()) + 3600,
    )
    record = dataclasses.replace(
        BLACKBOARD, raw_path=f"{BLACKBOARD.raw_path}&ks={quote(ks, safe='')}"
    )
    rules = write_rules(tmp_path, OVERRIDE_RULES)
    running = await start_proxy(upstream.url, rules=rules)

    response = await send_raw(
        running.ports[0], record.to_bytes((("X-Remote-User", "bob.real@example.edu"),))
    )

    assert response.body == b"true"
    received = only_forwarded(upstream)
    assert received.target == record.raw_path
    assert received.params["ks"] == ks


# -- KAVA --------------------------------------------------------------------------

KMS_CHANNEL_PAGE = "https://kms.example.edu/channel/Biology+101/86091"
KAVA_URL_FIELDS = (
    "service=analytics&action=trackEvent&eventType=3&partnerId=1234"
    "&entryId=0_abcd1234&sessionId=9d3c1f2a-5b6e-4c7d-8e9f-0a1b2c3d4e5f"
)
KAVA_BODY_FIELDS: dict[str, Any] = {
    "eventIndex": 2,
    "referrer": KMS_CHANNEL_PAGE,
    "deliveryType": "hls",
    "playbackType": "vod",
    "clientVer": "7.37.2",
    "clientTag": "html5:v7.37.2",
    "position": 0,
    "playbackSpeed": 1,
    "playerSkin": "1",
    "apiVersion": "3.3.0",
    "format": 1,
}
KMS_HOST: Headers = (("Host", "kms.example.edu"), ("Origin", "https://kms.example.edu"))
FIXED_TIME = 1764752160


def kava_get_target() -> str:
    """Every field flat in the query, URL-encoded, as playkit-js-kava's GET does."""
    rest = "&".join(
        f"{key}={quote(str(value), safe='')}" for key, value in KAVA_BODY_FIELDS.items()
    )
    return f"/api_v3/index.php?{KAVA_URL_FIELDS}&{rest}"


def kava_post() -> tuple[str, bytes]:
    """Four fields in the query, the rest as a JSON body (PROTOCOL.md 5.1)."""
    return f"/api_v3/index.php?{KAVA_URL_FIELDS}", json.dumps(KAVA_BODY_FIELDS).encode()


@pytest.fixture(name="fixed_clock")
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> int:
    """The stand-in's KAVA ``time`` pinned, so its answer is known byte for byte."""
    monkeypatch.setattr(proxy.standin, "time", SimpleNamespace(time=lambda: FIXED_TIME))
    return FIXED_TIME


async def test_kava_get_gains_fields_in_its_query_encoded_once(
    upstream: Any, start_proxy: Any
) -> None:
    target = kava_get_target()
    running = await start_proxy(upstream.url)

    await send_raw(
        running.ports[0], raw_request("GET", target, (*KMS_HOST, *KMS_GATEWAY))
    )

    received = only_forwarded(upstream)
    assert appended_segments(target, received.target, had_ks=False) == {
        "userId": "demo.user%40example.edu",
        "application": "MediaSpace",
        "playbackContext": "86091",
    }
    assert received.params["userId"] == "demo.user@example.edu"


async def test_kava_post_gains_fields_in_its_json_body_and_keeps_its_query(
    upstream: Any, start_proxy: Any
) -> None:
    target, body = kava_post()
    headers = (*KMS_HOST, ("Content-Type", "application/json"), *KMS_GATEWAY)
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], raw_request("POST", target, headers, body))

    received = only_forwarded(upstream)
    assert received.target == target
    assert received.header("Content-Length") == str(len(received.body))
    document = json.loads(received.body)
    added = {k: document.pop(k) for k in ("userId", "application", "playbackContext")}
    assert document == KAVA_BODY_FIELDS
    assert added["userId"] == "demo.user@example.edu"
    assert added["application"] == "MediaSpace"
    assert str(added["playbackContext"]) == "86091"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_kava_answer_reaches_player_unchanged(
    upstream: Any, start_proxy: Any, fixed_clock: int, method: str
) -> None:
    if method == "GET":
        request = raw_request("GET", kava_get_target(), KMS_HOST)
    else:
        target, body = kava_post()
        content_type = ("Content-Type", "application/json")
        request = raw_request("POST", target, (*KMS_HOST, content_type), body)
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], request)

    assert response.status == 200
    assert response.body == b'{"time":%d,"viewEventsEnabled":true}' % fixed_clock
    assert (response.header("Content-Type") or "").startswith("application/json")


# -- multirequest ----------------------------------------------------------------

SAKAI_PAGE = quote(
    "https://sakai.example.edu/portal/site/BIO101-F26/tool/8a1b2c3d", safe=""
)
SAKAI_HOST: Headers = (("Host", "sakai.example.edu"),)
MULTIREQUEST_CALLS = (
    "format=1&1:service=stats&1:action=collect&1:event:eventType=3"
    "&1:event:partnerId=1234&1:event:entryId=0_abcd1234&1:event:userId=carol"
    f"&1:event:referrer={SAKAI_PAGE}"
    "&2:service=baseEntry&2:action=get&2:entryId=x"
)
STATS_SUB_REQUEST_ADDED = {
    "1:event:applicationId": "Sakai",
    "1:event:contextId": "86301",
}


async def test_multirequest_query_enriches_only_its_stats_sub_request(
    upstream: Any, start_proxy: Any
) -> None:
    target = f"/api_v3/index.php?service=multirequest&{MULTIREQUEST_CALLS}"
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], raw_request("GET", target, SAKAI_HOST))

    assert response.status == 200
    received = only_forwarded(upstream)
    added = appended_segments(target, received.target, had_ks=False)
    assert added == STATS_SUB_REQUEST_ADDED
    assert received.params["2"] == {
        "service": "baseEntry",
        "action": "get",
        "entryId": "x",
    }


async def test_multirequest_form_body_enriches_only_its_stats_sub_request(
    upstream: Any, start_proxy: Any
) -> None:
    target = "/api_v3/index.php?service=multirequest&action=null"
    body = MULTIREQUEST_CALLS.encode()
    headers = (*SAKAI_HOST, ("Content-Type", "application/x-www-form-urlencoded"))
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], raw_request("POST", target, headers, body))

    received = only_forwarded(upstream)
    assert received.target == target
    added = appended_segments(body.decode(), received.body.decode(), had_ks=False)
    assert added == STATS_SUB_REQUEST_ADDED
    assert received.header("Content-Length") == str(len(received.body))
    assert received.params["2"] == {
        "service": "baseEntry",
        "action": "get",
        "entryId": "x",
    }


# -- other forms of stats.collect ------------------------------------------------

KMS_RECORD = by_label(LEGACY)["mwembed-kms3-share-no-fields"]


async def test_jsonp_answer_keeps_callback_and_javascript_content_type(
    upstream: Any, start_proxy: Any
) -> None:
    raw_path = KMS_RECORD.raw_path.replace("&format=1&", "&format=9&callback=kapi_abc&")
    record = dataclasses.replace(KMS_RECORD, raw_path=raw_path)
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], record.to_bytes(KMS_GATEWAY))

    assert response.status == 200
    assert response.body == b"kapi_abc(true);"
    assert (response.header("Content-Type") or "").startswith("application/javascript")
    added = appended_segments(raw_path, only_forwarded(upstream).target, had_ks=False)
    assert added["event:applicationId"] == "MediaSpace"


SHAREPOINT_PAGE = quote(
    "https://sp.example.edu/sites/biology/SitePages/Lecture1.aspx", safe=""
)


async def test_percent_encoded_event_keys_gain_keys_in_the_same_style(
    upstream: Any, start_proxy: Any
) -> None:
    target = (
        "//api_v3/index.php?service=stats&action=collect&clientTag=kdp%3Av3.9.9"
        "&event%3AeventType=3&event%3ApartnerId=1234&event%3AentryId=0_abcd1234"
        f"&event%3Areferrer={SHAREPOINT_PAGE}"
    )
    headers = (("Host", "sp.example.edu"), *SHAREPOINT_GATEWAY)
    running = await start_proxy(upstream.url)

    await send_raw(running.ports[0], raw_request("GET", target, headers))

    received = only_forwarded(upstream)
    assert appended_segments(target, received.target, had_ks=False) == {
        "event%3AuserId": "jdoe%40example.edu",
        "event%3AapplicationId": "SharePoint",
        "event%3AcontextId": "86101",
    }
    assert received.params["event"]["contextId"] == "86101"


@pytest.mark.parametrize(
    "prefix",
    [
        "/api_v3/index.php/service/stats/action/collect?",
        "/api_v3/service/stats/action/collect?",
        "//api_v3/index.php?service=stats&action=collect&",
    ],
    ids=["index-php-path-form", "short-path-form", "double-slash"],
)
async def test_path_forms_and_double_slash_are_enriched_and_keep_their_path(
    upstream: Any, start_proxy: Any, prefix: str
) -> None:
    target = (
        f"{prefix}format=1&event:eventType=3&event:partnerId=1234"
        f"&event:entryId=0_abcd1234&event:userId=carol&event:referrer={SAKAI_PAGE}"
    )
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], raw_request("GET", target, SAKAI_HOST))

    assert response.body == b"true"
    received = only_forwarded(upstream)
    assert appended_segments(target, received.target, had_ks=False) == {
        "event:applicationId": "Sakai",
        "event:contextId": "86301",
    }


# -- a gateway header that is not UTF-8 ------------------------------------------


def with_raw_header_line(request: bytes, line: bytes) -> bytes:
    """``request`` with one more header line, written as the given bytes."""
    head, _, body = request.partition(b"\r\n\r\n")
    return head + b"\r\n" + line + b"\r\n\r\n" + body


async def test_query_event_with_non_utf8_gateway_user_still_gains_its_other_fields(
    upstream: Any, start_proxy: Any
) -> None:
    record = by_label(LEGACY)["mwembed-kms3-share-no-fields"]
    request = with_raw_header_line(
        record.to_bytes(), b"X-Remote-User: Jos\xe9@example.edu"
    )
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], request)

    assert response.body == b"true"
    added = appended_segments(
        record.raw_path, only_forwarded(upstream).target, had_ks=False
    )
    # the user cannot be written as UTF-8: dropped as invalid, the rest added
    assert added == {"event:applicationId": "MediaSpace", "event:contextId": "86091"}


async def test_json_event_with_non_utf8_gateway_user_still_gains_its_other_fields(
    upstream: Any, start_proxy: Any
) -> None:
    record = by_label(PYTHON)["py-a2-collect-without-user-fields-no-ks"]
    request = with_raw_header_line(record.to_bytes(), b"X-Forwarded-User: Jos\xe9")
    running = await start_proxy(upstream.url)

    response = await send_raw(running.ports[0], request)

    assert b"<result>1</result>" in response.body
    received = only_forwarded(upstream)
    assert received_json_body(received, record.body) == expected_json_body(
        record.body, {"": {"applicationId": PAGE_HOST}}
    )
