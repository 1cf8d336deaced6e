"""Recognition of every event form, and writing values in the client's encoding."""

from __future__ import annotations

import orjson
import pytest

from proxy.kaltura.fields import Api, Field
from proxy.kaltura.params import QueryParams
from proxy.kaltura.recognise import RequestKind, recognise

EVENT = "event:eventType=3&event:partnerId=1234&event:entryId=0_abc"


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        (f"/api_v3/index.php?service=stats&action=collect&{EVENT}", "stats"),
        (f"/api_v3/index.php/service/stats/action/collect?{EVENT}", "stats"),
        (f"/api_v3/service/stats/action/collect?{EVENT}", "stats"),
        (f"//api_v3/index.php?service=stats&action=collect&{EVENT}", "stats"),
        (f"/api_v3/index.php?service=STATS&action=Collect&{EVENT}", "stats"),
        ("/api_v3/index.php?service=analytics&action=trackEvent&eventType=3", "kava"),
        (
            "/api_v3/index.php?service=multirequest&1:service=stats&1:action=collect",
            "multirequest",
        ),
        ("/api_v3/index.php?service=baseEntry&action=get&entryId=0_abc", "other"),
        ("/p/1234/sp/123400/playManifest/entryId/0_abc", "other"),
        ("/stats?service=stats&action=collect", "other"),
    ],
)
def test_recognise_tells_the_kind_from_every_url_form(target: str, kind: str) -> None:
    assert recognise("GET", target, None, None).kind == kind


def test_path_pairs_win_over_the_query_as_on_the_server() -> None:
    target = "/api_v3/service/baseentry/action/get?service=stats&action=collect"
    assert recognise("GET", target, None, None).kind is RequestKind.OTHER


def test_url_beats_the_body_for_service_and_action() -> None:
    body = b"service=baseEntry&action=get"
    recognised = recognise(
        "POST",
        "/api_v3/index.php?service=stats&action=collect",
        "application/x-www-form-urlencoded",
        body,
    )
    assert recognised.kind is RequestKind.STATS


def test_form_body_event_gains_fields_in_the_body_not_the_query() -> None:
    body = b"service=stats&action=collect&event:eventType=3&event:partnerId=1"
    recognised = recognise(
        "POST", "/api_v3/index.php", "application/x-www-form-urlencoded", body
    )
    recognised.events[0].set(Field.USER_ID, "a@b")

    assert "/api_v3/index.php" == recognised.render_target()
    assert body + b"&event:userId=a%40b" == recognised.render_body(body)


def test_a_value_in_the_query_of_a_form_post_is_rewritten_in_the_query() -> None:
    target = "/api_v3/index.php?event:userId=mallory"
    body = b"service=stats&action=collect&event:eventType=3"
    recognised = recognise("POST", target, "application/x-www-form-urlencoded", body)
    recognised.events[0].set(Field.USER_ID, "alice")
    recognised.events[0].set(Field.APPLICATION_NAME, "Moodle")

    assert "/api_v3/index.php?event:userId=alice" == recognised.render_target()
    assert body + b"&event:applicationId=Moodle" == recognised.render_body(body)


def test_json_body_event_is_reserialised_with_the_value_nested() -> None:
    body = orjson.dumps({"format": "2", "event": {"eventType": "3", "partnerId": "1"}})
    recognised = recognise(
        "POST", "/api_v3/service/stats/action/collect", "application/json", body
    )
    recognised.events[0].set(Field.PLAYBACK_CONTEXT, "86091")

    sent = orjson.loads(recognised.render_body(body))
    assert {"eventType": "3", "partnerId": "1", "contextId": "86091"} == sent["event"]


def test_json_client_using_numbers_gets_a_number_for_the_context() -> None:
    body = orjson.dumps({"event": {"eventType": 3, "partnerId": 1234}})
    recognised = recognise(
        "POST", "/api_v3/service/stats/action/collect", "application/json", body
    )
    recognised.events[0].set(Field.PLAYBACK_CONTEXT, "86091")
    assert 86091 == orjson.loads(recognised.render_body(body))["event"]["contextId"]


def test_json_with_charset_is_still_read_but_not_other_media_types() -> None:
    body = b'{"service": "stats", "action": "collect", "event": {"eventType": "3"}}'
    target = "/api_v3/index.php"
    assert recognise("POST", target, "application/json; charset=utf-8", body).events
    assert not recognise("POST", target, "text/plain", body).events


def test_mwembed_values_are_read_and_written_encoded_twice() -> None:
    target = (
        "/api_v3/index.php?service=stats&action=collect&clientTag=kwidget%3Av2.101"
        "&event:eventType=3&event:referrer=https%253A%252F%252Fkms.example.edu%252Fx"
        "&event:userId=bob%2540example.edu"
    )
    event = recognise("GET", target, None, None).events[0]
    assert "bob@example.edu" == event.get(Field.USER_ID)
    assert "https://kms.example.edu/x" == event.referrer

    event.set(Field.APPLICATION_NAME, "Media Space")
    assert "&event:applicationId=Media%2520Space" in event.stores[0].params.render()


def test_kdp3_values_are_written_encoded_once() -> None:
    target = (
        "//api_v3/index.php?service=stats&action=collect&clientTag=kdp%3Av3.9.9"
        "&event:eventType=3&event:referrer=https%3A%2F%2Fsp.example.edu%2Fsites%2Fa"
    )
    recognised = recognise("GET", target, None, None)
    recognised.events[0].set(Field.USER_ID, "campus\\erin")
    assert recognised.render_target() == target + "&event:userId=campus%5Cerin"


def test_without_a_referrer_the_kwidget_client_tag_means_encoded_twice() -> None:
    target = "/api_v3/index.php?service=stats&action=collect&clientTag=kwidget%3Av2&event:eventType=3"
    recognised = recognise("GET", target, None, None)
    recognised.events[0].set(Field.USER_ID, "a@b")
    assert recognised.render_target().endswith("&event:userId=a%2540b")


def test_percent_encoded_keys_are_read_and_written_in_the_same_style() -> None:
    target = (
        "/api_v3/index.php?service=stats&action=collect"
        "&event%3AeventType=3&event%3AuserId=carol"
    )
    recognised = recognise("GET", target, None, None)
    event = recognised.events[0]
    assert "carol" == event.get(Field.USER_ID)

    event.set(Field.APPLICATION_NAME, "Sakai")
    assert recognised.render_target() == target + "&event%3AapplicationId=Sakai"


def test_an_override_rewrites_the_value_in_place_and_nothing_else() -> None:
    target = "/api_v3/index.php?service=stats&action=collect&event:userId=mallory&x=%7E"
    recognised = recognise("GET", target, None, None)
    recognised.events[0].set(Field.USER_ID, "alice")
    expected = "/api_v3/index.php?service=stats&action=collect&event:userId=alice&x=%7E"
    assert expected == recognised.render_target()


def test_an_empty_value_counts_as_missing_and_is_filled_in_place() -> None:
    target = "/api_v3/index.php?service=stats&action=collect&event:userId=&a=1"
    recognised = recognise("GET", target, None, None)
    event = recognised.events[0]
    assert event.get(Field.USER_ID) is None

    event.set(Field.USER_ID, "dana")
    assert recognised.render_target().endswith("event:userId=dana&a=1")


def test_an_untouched_request_renders_byte_for_byte() -> None:
    target = "/api_v3/index.php?service=stats&action=collect&a=%41&&b&c=+&"
    recognised = recognise("GET", target, None, None)
    assert target == recognised.render_target()


def test_multirequest_enriches_only_its_stats_sub_requests() -> None:
    target = (
        "/api_v3/index.php?service=multirequest&ks=KS"
        "&1:service=stats&1:action=collect&1:event:eventType=3"
        "&2:service=baseEntry&2:action=get&2:entryId=0_abc"
        "&3:service=stats&3:action=collect&3:event:eventType=4&3:ks=OWN"
    )
    recognised = recognise("GET", target, None, None)
    assert [1, 3] == [event.index for event in recognised.events]
    assert "KS" == recognised.events[0].ks
    assert "OWN" == recognised.events[1].ks

    recognised.events[0].set(Field.USER_ID, "u1")
    assert recognised.render_target().endswith("&1:event:userId=u1")


def test_json_multirequest_sub_requests_inherit_the_common_ks() -> None:
    body = orjson.dumps(
        {
            "ks": "COMMON",
            "0": {"service": "stats", "action": "collect", "event": {"eventType": "2"}},
            "1": {"service": "media", "action": "get", "entryId": "0_abc"},
        }
    )
    recognised = recognise(
        "POST", "/api_v3/service/multirequest", "application/json", body
    )
    assert [0] == [event.index for event in recognised.events]
    assert "COMMON" == recognised.events[0].ks

    recognised.events[0].set(Field.USER_ID, "u0")
    sent = orjson.loads(recognised.render_body(body))
    assert "u0" == sent["0"]["event"]["userId"]
    assert {"service": "media", "action": "get", "entryId": "0_abc"} == sent["1"]


def test_kava_get_is_flat_and_gains_fields_in_the_query() -> None:
    target = (
        "/api_v3/index.php?service=analytics&action=trackEvent&eventType=3"
        "&partnerId=1234&entryId=0_abc&referrer=https%3A%2F%2Fa.example%2Fp"
    )
    recognised = recognise("GET", target, None, None)
    event = recognised.events[0]
    assert Api.KAVA is event.api
    assert ("1234", "3", "https://a.example/p") == (
        event.partner_id,
        event.event_type,
        event.referrer,
    )

    event.set(Field.APPLICATION_NAME, "Moodle")
    assert recognised.render_target().endswith("&application=Moodle")


def test_kava_post_reads_the_query_and_writes_the_json_body() -> None:
    target = (
        "/api_v3/index.php?service=analytics&action=trackEvent"
        "&eventType=3&partnerId=1234&entryId=0_abc&sessionId=s"
    )
    body = orjson.dumps({"referrer": "https://a.example/p", "clientVer": "7"})
    recognised = recognise("POST", target, "application/json", body)
    event = recognised.events[0]
    assert "1234" == event.partner_id

    event.set(Field.PLAYBACK_CONTEXT, "86091")
    assert target == recognised.render_target()
    assert "86091" == orjson.loads(recognised.render_body(body))["playbackContext"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json}"),
        ("application/json", b'["a list"]'),
        ("application/json", b"\xff\xfe{}"),
        ("application/x-www-form-urlencoded", b"event:userId=\xff\xfe"),
    ],
)
def test_an_unreadable_body_leaves_the_request_without_events(
    content_type: str, body: bytes
) -> None:
    recognised = recognise(
        "POST", "/api_v3/service/stats/action/collect", content_type, body
    )
    # the URL says stats.collect, but the body is Kaltura's to judge
    assert RequestKind.STATS is recognised.kind
    assert [] == recognised.events


def test_query_params_keep_the_last_occurrence_like_php() -> None:
    params = QueryParams("a=1&a=2&b=%41&c")
    assert ("2", "A", "") == (params.get("a"), params.get("b"), params.get("c"))
    assert params.get("d") is None
