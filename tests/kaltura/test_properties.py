"""Property-based: the event parser and rewriter on generated requests.

Hypothesis builds query strings, form bodies, JSON bodies and
multirequests out of real event keys, odd keys, and values with every
character that matters to a query (``%``, ``&``, ``=``, ``+``, spaces,
non-ASCII text, stray escapes). For each, recognition and enrichment
must never raise, and everything the rules did not add must leave as it
came: the original query or form segments byte for byte and in order,
the JSON document equal apart from the added fields.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.enrich import Enricher
from proxy.kaltura.recognise import recognise
from proxy.kaltura.session import KsReader
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleSet

RULES = """
[[rule]]
name = "all"
userId = [{ value = "prop user" }]
applicationName = [{ value = "Prop&App=1%" }]
playbackContext = [{ value = "4242" }]
"""

EVENT_NAMES = ("eventType", "partnerId", "entryId", "userId", "referrer", "sessionId")
raw_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
)
# a value as a client might write it: encoded, partly encoded, or raw odd bytes
value = st.one_of(
    raw_text.map(lambda text: quote(text, safe="")),
    raw_text.map(lambda text: quote(text, safe="/:@")),
    st.sampled_from(["", "%", "%zz", "%25", "a+b", "%2B", "x%3Dy", "%C3%A9", "é"]),
)
key = st.one_of(
    st.sampled_from(EVENT_NAMES).map(lambda name: f"event:{name}"),
    st.sampled_from(EVENT_NAMES).map(lambda name: f"event%3A{name}"),
    st.sampled_from(["format", "clientTag", "ks", "callback", "ignoreNull"]),
    st.text(st.sampled_from("abcxyz:_-"), min_size=1, max_size=8),
)
segment = st.builds(lambda k, v: f"{k}={v}", key, value) | key
segments = st.lists(segment, max_size=12)


def _headers() -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Host": "lms.example.edu"}))


def _load(text: str) -> RuleSet:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "props.toml"
        path.write_text(text)
        return load_rules(path)


RULESET = _load(RULES)


def enrich(
    method: str, target: str, content_type: str | None, body: bytes | None
) -> Any:
    recognised = recognise(method, target, content_type, body)
    asyncio.run(
        Enricher(ks_reader=KsReader()).enrich(
            RULESET, recognised, headers=_headers(), host="lms.example.edu"
        )
    )
    return recognised


FILLED = ("userId", "applicationId", "contextId")


def _key(part: str) -> str:
    return part.partition("=")[0].replace("%3A", ":")


def filled_keys(parts: list[str]) -> set[str]:
    """The report-field keys the rules fill: those whose last value is empty.

    As in PHP the last occurrence of a key is its value; an empty one means
    the field is absent, and the proxy writes the value in every occurrence
    of the key, so that whichever Kaltura reads, it reads the new one.
    """
    last = {_key(part): part.partition("=")[2] for part in parts}
    return {
        key
        for key, text in last.items()
        if key.rpartition(":")[2] in FILLED and text == ""
    }


def kept_in_order(original: list[str], rendered: list[str]) -> bool:
    """Every segment the rules do not fill is in ``rendered``, in order."""
    filled = filled_keys(original)
    position = 0
    for part in original:
        if _key(part) in filled:
            continue
        try:
            position = rendered.index(part, position) + 1
        except ValueError:
            return False
    return True


PROPERTY = settings(
    max_examples=int(os.environ.get("KSTATS_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(parts=segments)
def test_a_stats_query_keeps_every_segment_it_came_with(parts: list[str]) -> None:
    query = "&".join(["service=stats", "action=collect", *parts])
    recognised = enrich("GET", f"/api_v3/index.php?{query}", None, None)
    rendered = recognised.render_target().partition("?")[2].split("&")
    assert kept_in_order(query.split("&"), rendered)


@PROPERTY
@given(parts=segments)
def test_a_form_body_keeps_every_segment_it_came_with(parts: list[str]) -> None:
    body = "&".join(["event:eventType=3", *parts]).encode()
    recognised = enrich(
        "POST",
        "/api_v3/index.php?service=stats&action=collect",
        "application/x-www-form-urlencoded",
        body,
    )
    rendered = recognised.render_body(body).decode("utf-8", "surrogateescape")
    assert kept_in_order(body.decode().split("&"), rendered.split("&"))


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), raw_text)
json_event = st.dictionaries(
    st.sampled_from([*EVENT_NAMES, "duration", "seek", "x"]), json_scalar, max_size=6
)


@PROPERTY
@given(event=json_event, extra=st.dictionaries(raw_text, json_scalar, max_size=4))
def test_a_json_body_is_equal_but_for_the_fields_added(
    event: dict[str, Any], extra: dict[str, Any]
) -> None:
    document = {**extra, "event": event, "partnerId": "1234"}
    body = json.dumps(document).encode()
    recognised = enrich(
        "POST", "/api_v3/service/stats/action/collect", "application/json", body
    )
    after = json.loads(recognised.render_body(body))
    # a field that is null or empty is absent, and filled where it stands
    filled = {k for k in FILLED if k in event and event[k] in (None, "")}
    added = set(after["event"]) - set(event)
    assert added <= set(FILLED)
    changed = added | filled
    assert {k: v for k, v in after["event"].items() if k not in changed} == {
        k: v for k, v in event.items() if k not in filled
    }
    assert {k: v for k, v in after.items() if k != "event"} == {
        k: v for k, v in document.items() if k != "event"
    }


@PROPERTY
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(["stats.collect", "baseEntry.get"]), segments),
        min_size=1,
        max_size=4,
    )
)
def test_a_multirequest_keeps_every_call_it_came_with(
    calls: list[tuple[str, list[str]]],
) -> None:
    parts = ["service=multirequest"]
    for index, (call, extra) in enumerate(calls, start=1):
        service, action = call.split(".")
        parts += [f"{index}:service={service}", f"{index}:action={action}"]
        parts += [f"{index}:{segment}" for segment in extra]
    query = "&".join(parts)
    recognised = enrich("GET", f"/api_v3/index.php?{query}", None, None)
    rendered = recognised.render_target().partition("?")[2].split("&")
    assert kept_in_order(query.split("&"), rendered)
    stats_calls = sum(call == "stats.collect" for call, _ in calls)
    assert len(recognised.events) == stats_calls
