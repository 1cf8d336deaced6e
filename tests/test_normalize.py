"""GET normalisation and shadow mode through a running proxy.

The Python client's recorded POSTs and multirequests, and the real client
itself, go through a proxy with ``normalize_get``: the stand-in Kaltura
must get one GET per stats event, with top-level ``event:*`` keys and the
KS, the other calls of a multirequest as a multirequest, and each client
the answer shape it expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import ProxyFactory, Upstream
from support import PYTHON_CLIENT_RULES, load_records, send_raw
from test_python_client import (
    HEADER_USER,
    USER_HEADER,
    collect,
    in_thread,
    make_client,
    multirequest,
    stats_event,
)

from proxy.standin import RecordedRequest

RECORDS = {r.label: r for r in load_records("python-client.jsonl")}
GATEWAY = ((USER_HEADER, HEADER_USER),)


@pytest.fixture(name="rules")
def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text("[kaltura]\nwidget_ks = false\n" + PYTHON_CLIENT_RULES)
    return path


def forwarded(upstream: Upstream) -> list[RecordedRequest]:
    return [
        r
        for r in upstream.standin.received
        if str(r.params.get("service", "")).lower() != "session"
    ]


def is_event_get(request: RecordedRequest) -> bool:
    return request.method == "GET" and request.target.startswith(
        "/api_v3/index.php?service=stats&action=collect&"
    )


async def test_a_json_collect_post_goes_as_one_get_with_its_ks_and_fields(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    record = RECORDS["py-b1-collect-with-user-fields-ks-v1"]
    proxy = await start_proxy(upstream.url, rules=rules, normalize_get=True)

    response = await send_raw(proxy.ports[0], record.to_bytes(GATEWAY))

    (get,) = forwarded(upstream)
    assert is_event_get(get) and b"" == get.body
    original = json.loads(record.body)
    assert original["ks"] == get.params["ks"]
    event = get.params["event"]
    assert original["event"]["entryId"] == event["entryId"]
    assert original["event"]["userId"] == event["userId"]  # its own, kept
    # the answer in the format the client asked for (XML, format=2)
    assert 200 == response.status
    assert "1" == ElementTree.fromstring(response.body).findtext("result")
    assert 1 == proxy.app.metrics.normalized.value("normalized")


async def test_a_multirequest_of_collects_becomes_one_get_each_and_one_answer(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    record = RECORDS["py-c2-multirequest-2x-collect-ks-v1"]
    proxy = await start_proxy(upstream.url, rules=rules, normalize_get=True)

    response = await send_raw(proxy.ports[0], record.to_bytes(GATEWAY))

    gets = forwarded(upstream)
    assert 2 == len(gets) and all(is_event_get(g) for g in gets)
    original = json.loads(record.body)
    calls = [original[k] for k in sorted((k for k in original if k.isdigit()), key=int)]
    assert [c["event"]["eventType"] for c in calls] == [
        g.params["event"]["eventType"] for g in gets
    ]
    assert all(
        g.params["ks"] == original["0"].get("ks", original.get("ks")) for g in gets
    )
    items = ElementTree.fromstring(response.body).find("result")
    assert items is not None and ["1", "1"] == [i.text for i in items]


async def test_other_calls_of_a_multirequest_still_go_together_in_order(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules, normalize_get=True)
    document = {
        "format": 1,
        "partnerId": 1234,
        "1": {"service": "baseEntry", "action": "get", "entryId": "0_abcd1234"},
        "2": {
            "service": "stats",
            "action": "collect",
            "event": {"eventType": 3, "partnerId": 1234, "entryId": "0_abcd1234"},
        },
        "3": {"service": "media", "action": "list"},
    }
    body = json.dumps(document).encode()
    request = (
        b"POST /api_v3/service/multirequest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"{USER_HEADER}: {HEADER_USER}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    response = await send_raw(proxy.ports[0], request)

    get, others = sorted(forwarded(upstream), key=lambda r: r.method != "GET")
    assert is_event_get(get) and HEADER_USER == get.params["event"]["userId"]
    rest = json.loads(others.body)
    assert "baseEntry" == rest["1"]["service"] and "media" == rest["2"]["service"]
    assert "3" not in rest
    # the stand-in refuses baseEntry and media: their errors, around the true
    results = json.loads(response.body)
    assert [dict, bool, dict] == [type(r) for r in results]
    assert results[1] is True


async def test_the_real_client_parses_the_answers_of_a_normalising_proxy(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=rules, normalize_get=True)
    client = make_client(proxy.ports[0])

    single = await in_thread(collect(client, stats_event()))
    several = await in_thread(multirequest(client, stats_event(), stats_event(3)))

    assert single is True
    # as the client reads Kaltura's own XML multirequest answer (it has no
    # types there: see test_python_client.py)
    assert ["1", "1"] == several
    gets = forwarded(upstream)
    assert 3 == len(gets) and all(is_event_get(g) for g in gets)
    assert {HEADER_USER} == {g.params["event"]["userId"] for g in gets}


async def test_an_event_over_the_get_line_limit_goes_as_it_came_and_is_counted(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    record = RECORDS["py-a1-collect-with-user-fields-no-ks"]
    proxy = await start_proxy(
        upstream.url, rules=rules, normalize_get=True, max_get_line=200
    )

    await send_raw(proxy.ports[0], record.to_bytes(GATEWAY))

    (sent,) = forwarded(upstream)
    assert "POST" == sent.method and record.raw_path == sent.target
    assert 1 == proxy.app.metrics.normalized.value("line_too_long")


async def test_shadow_mode_forwards_byte_for_byte_and_counts_apart(
    upstream: Upstream, start_proxy: ProxyFactory, rules: Path
) -> None:
    record = RECORDS["py-a2-collect-without-user-fields-no-ks"]
    proxy = await start_proxy(upstream.url, rules=rules, shadow=True)

    await send_raw(proxy.ports[0], record.to_bytes(GATEWAY))

    (sent,) = forwarded(upstream)
    assert (record.raw_path, record.body) == (sent.target, sent.body)
    metrics = proxy.app.metrics
    assert 1 == metrics.shadow_enrichments.value("userId", "header")
    assert 0 == metrics.enrichments.value("userId", "header")
    assert not any(metrics.enrichments.counts.values())


def test_normalisation_is_named_in_the_rules_too(tmp_path: Path) -> None:
    from proxy.rules.loader import RulesError, load_rules

    path = tmp_path / "r.toml"
    path.write_text('[kaltura]\nnormalize = "get"\n')
    assert load_rules(path).kaltura.normalize_get
    path.write_text('[kaltura]\nnormalize = "post"\n')
    with pytest.raises(RulesError, match="normalize: expected 'get' or 'none'"):
        load_rules(path)
