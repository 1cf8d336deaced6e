"""Enrichment semantics: policies, order, sanitising, sources and conditions."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.enrich import Enricher, EventOutcome
from proxy.kaltura.fields import Field
from proxy.kaltura.ks import AdminSecrets, make_ks_v1, make_ks_v2
from proxy.kaltura.recognise import Recognised, recognise
from proxy.kaltura.session import KsReader
from proxy.rules.loader import load_rules

STATS = "/api_v3/index.php?service=stats&action=collect&event:eventType=3"
PAGE = "&event:referrer=https%3A%2F%2Fmoodle.example.edu%2Fcourse%2F42"
SECRET = "testsecret"


async def enrich(
    tmp_path: Path,
    rules_text: str,
    target: str,
    headers: dict[str, str] | None = None,
    secrets: AdminSecrets = AdminSecrets.EMPTY,
) -> tuple[Recognised, list[EventOutcome]]:
    (tmp_path / "r.toml").write_text(rules_text, encoding="utf-8")
    rules = load_rules(tmp_path / "r.toml")
    recognised = recognise("GET", target, None, None)
    header_map = CIMultiDictProxy(CIMultiDict(headers or {}))
    outcomes = await Enricher(ks_reader=KsReader(secrets)).enrich(
        rules, recognised, headers=header_map, host=header_map.get("Host", "")
    )
    return recognised, outcomes


def settled(outcome: EventOutcome, field: Field) -> tuple[str, str | None]:
    final = [e for e in outcome.enrichments if e.field is field]
    return final[-1].source, final[-1].rule


async def test_fill_keeps_the_events_own_value(tmp_path: Path) -> None:
    rules = '[[rule]]\nname = "r"\nuserId = [{ value = "rule-user" }]\n'
    recognised, (outcome,) = await enrich(tmp_path, rules, STATS + "&event:userId=own")
    assert "own" == recognised.events[0].get(Field.USER_ID)
    assert ("event", None) == settled(outcome, Field.USER_ID)
    assert STATS + "&event:userId=own" == recognised.render_target()


async def test_override_replaces_the_events_value_when_the_rule_yields(
    tmp_path: Path,
) -> None:
    rules = (
        '[[rule]]\nname = "r"\npolicy.userId = "override"\n'
        'userId = [{ header = "X-Remote-User" }]\n'
    )
    target = STATS + "&event:userId=mallory"
    recognised, (outcome,) = await enrich(
        tmp_path, rules, target, {"X-Remote-User": "alice"}
    )
    assert "alice" == recognised.events[0].get(Field.USER_ID)
    assert ("header", "r") == settled(outcome, Field.USER_ID)

    # no header: the override has nothing, and the event keeps its own
    recognised, (outcome,) = await enrich(tmp_path, rules, target)
    assert "mallory" == recognised.events[0].get(Field.USER_ID)
    assert ("event", None) == settled(outcome, Field.USER_ID)


async def test_rules_are_tried_in_order_and_sources_in_order(tmp_path: Path) -> None:
    rules = """
[[rule]]
name = "first"
userId = [{ header = "X-Absent" }, { header = "X-Second" }]
[[rule]]
name = "second"
userId = [{ value = "never" }]
applicationName = [{ value = "FromSecond" }]
"""
    recognised, (outcome,) = await enrich(tmp_path, rules, STATS, {"X-Second": "bob"})
    event = recognised.events[0]
    assert "bob" == event.get(Field.USER_ID)
    assert "FromSecond" == event.get(Field.APPLICATION_NAME)
    assert ("first", "second") == outcome.matched


async def test_invalid_values_are_counted_and_the_next_source_tried(
    tmp_path: Path,
) -> None:
    too_long_user, too_long_name = "u" * 101, "a" * 65
    rules = (
        '[[rule]]\nname = "r"\n'
        f'userId = [{{ value = "{too_long_user}" }}, {{ value = "ok" }}]\n'
        'playbackContext = [{ value = "abc" }, { value = "-4" }, { value = "0" },'
        " { value = 86091 }]\n"
        f'applicationName = [{{ value = "{too_long_name}" }}]\n'
    )
    recognised, (outcome,) = await enrich(tmp_path, rules, STATS)
    event = recognised.events[0]
    assert "ok" == event.get(Field.USER_ID)
    assert "86091" == event.get(Field.PLAYBACK_CONTEXT)
    assert event.get(Field.APPLICATION_NAME) is None

    sources = [(e.field, e.source) for e in outcome.enrichments]
    assert 3 == sources.count((Field.PLAYBACK_CONTEXT, "invalid"))
    assert (Field.APPLICATION_NAME, "none") in sources


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("  padded  ", "padded"),
        ("tab\tinside", None),
        ("new\nline", None),
        ("x" * 100, "x" * 100),
        ("", None),
    ],
)
async def test_user_ids_are_sanitised(
    tmp_path: Path, value: str, valid: str | None
) -> None:
    rules = '[[rule]]\nname = "r"\nuserId = [{ header = "X-User" }]\n'
    recognised, _ = await enrich(tmp_path, rules, STATS, {"X-User": value})
    assert valid == recognised.events[0].get(Field.USER_ID)


async def test_a_ks_with_a_real_user_decides_and_userid_is_left_alone(
    tmp_path: Path,
) -> None:
    ks = make_ks_v1(
        partner_id=1234, secret=SECRET, user_id="alice", expiry=int(time.time()) + 60
    )
    rules = (
        '[[rule]]\nname = "r"\npolicy.userId = "override"\n'
        'userId = [{ value = "bob" }]\n'
    )
    target = f"{STATS}&ks={ks}"
    recognised, (outcome,) = await enrich(tmp_path, rules, target)
    assert recognised.events[0].get(Field.USER_ID) is None
    assert ("ks", None) == settled(outcome, Field.USER_ID)
    assert target == recognised.render_target()


async def test_a_widget_ks_does_not_decide_the_user(tmp_path: Path) -> None:
    ks = make_ks_v1(
        partner_id=1234,
        secret=SECRET,
        user_id="0",
        expiry=int(time.time()) + 60,
        privileges="view:*,widget:1",
    )
    rules = '[[rule]]\nname = "r"\nuserId = [{ value = "bob" }]\n'
    recognised, _ = await enrich(tmp_path, rules, f"{STATS}&ks={ks}")
    assert "bob" == recognised.events[0].get(Field.USER_ID)


async def test_ks_v2_is_read_only_with_the_partners_secret(tmp_path: Path) -> None:
    ks = make_ks_v2(
        partner_id=1234, secret=SECRET, user_id="alice", expiry=int(time.time()) + 60
    )
    rules = '[[rule]]\nname = "r"\nuserId = [{ value = "bob" }]\n'
    target = f"{STATS}&ks={ks.replace('=', '%3D')}"

    _, (outcome,) = await enrich(
        tmp_path, rules, target, secrets=AdminSecrets.parse(f"1234:{SECRET}")
    )
    assert ("ks", None) == settled(outcome, Field.USER_ID)

    # without the secret the KS user is unknown, and the rule fills userId
    _, (outcome,) = await enrich(tmp_path, rules, target)
    assert ("value", "r") == settled(outcome, Field.USER_ID)


async def test_decode_steps_read_a_ks_cookie_base64_and_url(tmp_path: Path) -> None:
    ks = make_ks_v1(
        partner_id=1234, secret=SECRET, user_id="carol", expiry=int(time.time()) + 60
    )
    rules = """
[[rule]]
name = "r"
userId = [{ cookie = "kaltura_ks", decode = "ks" }]
applicationName = [{ header = "X-App", decode = "base64" }]
playbackContext = [{ query = "ctx", decode = "url" }]
"""
    app = base64.b64encode(b"My App").decode()
    recognised, _ = await enrich(
        tmp_path,
        rules,
        STATS + "&ctx=86%253091",
        {"Cookie": f"other=1; kaltura_ks={ks}", "X-App": app},
    )
    event = recognised.events[0]
    assert ("carol", "My App", "86091") == (
        event.get(Field.USER_ID),
        event.get(Field.APPLICATION_NAME),
        event.get(Field.PLAYBACK_CONTEXT),
    )


async def test_page_groups_patterns_and_tables(tmp_path: Path) -> None:
    rules = """
[[rule]]
name = "r"
userId = [{ header = "X-Remote-User", pattern = '^([^@]+)@' }]
playbackContext = [{ page = '/course/(\\d+)', table = "courses" }]
applicationName = [{ page = '^https://([^/.]+)' }]
[table.courses]
entries = { "42" = 86091 }
"""
    recognised, _ = await enrich(
        tmp_path, rules, STATS + PAGE, {"X-Remote-User": "dana@example.edu"}
    )
    event = recognised.events[0]
    assert "dana" == event.get(Field.USER_ID)
    assert "86091" == event.get(Field.PLAYBACK_CONTEXT)
    assert "moodle" == event.get(Field.APPLICATION_NAME)


async def test_a_table_miss_yields_nothing(tmp_path: Path) -> None:
    rules = """
[[rule]]
name = "r"
playbackContext = [{ page = '/course/(\\d+)', table = "courses" }]
[table.courses]
entries = { "7" = 86091 }
"""
    recognised, (outcome,) = await enrich(tmp_path, rules, STATS + PAGE)
    assert recognised.events[0].get(Field.PLAYBACK_CONTEXT) is None
    assert ("none", None) == settled(outcome, Field.PLAYBACK_CONTEXT)


@pytest.mark.parametrize(
    ("when", "headers", "matches"),
    [
        ("when.page = 'moodle\\.example'", {}, True),
        ("when.page = 'blackboard'", {}, False),
        ("when.host = '^lms\\.'", {"Host": "lms.example.edu"}, True),
        ("when.host = '^lms\\.'", {"Host": "evil.example"}, False),
        ('when.path = "/api_v3/"', {}, True),
        ('when.path = "/other/"', {}, False),
        ("when.partner = 1234", {}, True),
        ("when.partner = [5, 6]", {}, False),
        ('when.header = { "X-App" = "^moodle$" }', {"X-App": "moodle"}, True),
        ('when.header = { "X-App" = "^moodle$" }', {}, False),
    ],
)
async def test_when_conditions(
    tmp_path: Path, when: str, headers: dict[str, str], matches: bool
) -> None:
    rules = f'[[rule]]\nname = "r"\n{when}\napplicationName = [{{ value = "A" }}]\n'
    target = STATS + PAGE + "&event:partnerId=1234"
    recognised, (outcome,) = await enrich(tmp_path, rules, target, headers)
    assert matches == (outcome.matched == ("r",))
    assert matches == (recognised.events[0].get(Field.APPLICATION_NAME) == "A")


async def test_the_http_referer_is_the_page_when_the_event_has_no_referrer(
    tmp_path: Path,
) -> None:
    rules = '[[rule]]\nname = "r"\nwhen.page = "iframe"\n'
    _, (outcome,) = await enrich(
        tmp_path, rules, STATS, {"Referer": "https://lms.example.edu/iframe?x=1"}
    )
    assert "https://lms.example.edu/iframe?x=1" == outcome.page
    assert ("r",) == outcome.matched


async def test_a_base64_kava_referrer_is_decoded_for_the_rules(
    tmp_path: Path,
) -> None:
    page = base64.b64encode(b"https://kms.example.edu/channel/x/86091").decode()
    target = (
        "/api_v3/index.php?service=analytics&action=trackEvent&eventType=3"
        f"&partnerId=1234&referrer={page}"
    )
    rules = '[[rule]]\nname = "r"\nplaybackContext = [{ page = "/(\\\\d+)$" }]\n'
    recognised, (outcome,) = await enrich(tmp_path, rules, target)
    assert "https://kms.example.edu/channel/x/86091" == outcome.page
    assert "86091" == recognised.events[0].get(Field.PLAYBACK_CONTEXT)


async def test_rules_see_the_request_as_it_came_before_any_write(
    tmp_path: Path,
) -> None:
    # sub-request 2 reads sub-request 1's userId parameter: it must see
    # the original (absent) value, not the one written for sub-request 1
    rules = """
[[rule]]
name = "r"
userId = [{ query = "1:event:userId" }, { value = "written" }]
applicationName = [{ query = "1:event:userId" }, { value = "none-seen" }]
"""
    target = (
        "/api_v3/index.php?service=multirequest"
        "&1:service=stats&1:action=collect&1:event:eventType=3"
        "&2:service=stats&2:action=collect&2:event:eventType=4"
    )
    recognised, _ = await enrich(tmp_path, rules, target)
    first, second = recognised.events
    assert "written" == first.get(Field.USER_ID)
    assert "written" == second.get(Field.USER_ID)
    assert "none-seen" == second.get(Field.APPLICATION_NAME)
