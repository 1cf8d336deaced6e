"""Micro-benchmarks of one event's rewrite, each also a test of its output.

The rewrite is the CPU the proxy spends on a player event besides HTTP:
recognise the request, enrich its events (match, resolve, apply), render
the target and body, and compute the upstream headers. Three realistic
events are measured, each with rules adding all three report fields:

- an mwEmbed v2 ``stats.collect`` GET (values encoded twice);
- a KAVA ``analytics.trackEvent`` POST with a JSON body;
- a Python client ``stats.collect`` POST with a JSON body, as recorded in
  the shared fixtures.

The enricher is a coroutine: each round runs it to completion on one event
loop made for the test, and that loop's own cost (about 10 us a call on a
typical machine) is part of every timing.

Each benchmark asserts what the rewrite produced, so it is a real test in
the normal run; it never asserts a time. Compare timings with
``python -m pytest tests/test_rewrite_benchmark.py --benchmark-only``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from support import (
    KAVA_BODY,
    KAVA_TARGET,
    MWEMBED_STATS_TARGET,
    PYTHON_CLIENT_RULES,
    load_records,
)

from proxy.enrich import Enricher, EventOutcome
from proxy.headers import ForwardingPolicy, parse_networks, upstream_headers
from proxy.kaltura.recognise import RequestKind, recognise
from proxy.kaltura.session import KsReader
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleSet

pytestmark = pytest.mark.benchmark(group="rewrite", max_time=0.5)

PEER = "127.0.0.1"

# A browser on a Moodle course page: the player shares the page's cookies.
BROWSER_HEADERS = (
    ("Host", "moodle.example.edu"),
    ("User-Agent", "Mozilla/5.0"),
    ("Accept", "*/*"),
    ("Referer", "https://moodle.example.edu/x"),
    ("Cookie", "MoodleSession=abc123; MOODLEID1_=x"),
)

# userId from a cookie, applicationName a value, playbackContext the page.
BROWSER_RULES = """
[[rule]]
name = "bench"
userId = [{ cookie = "MoodleSession", pattern = '^(\\w+)' }]
applicationName = [{ value = "Moodle" }]
playbackContext = [{ page = '/course/(\\d+)' }]
"""


PYTHON_CLIENT_LABEL = "py-a2-collect-without-user-fields-no-ks"


@dataclass(frozen=True)
class Request:
    """One event as the proxy receives it."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")


class Rewritten(NamedTuple):
    """What the rewrite found, and what it sends upstream."""

    kind: RequestKind
    outcomes: list[EventOutcome]
    target: str
    body: bytes
    headers: list[tuple[str, str]]

    @property
    def added(self) -> dict[str, str]:
        """The source of each field written, by field."""
        return {str(e.field): e.source for o in self.outcomes for e in o.added}


def make_headers(pairs: tuple[tuple[str, str], ...]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def rules_from(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return load_rules(path)


@pytest.fixture(name="loop")
def _loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the whole benchmark, driven by hand."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Rewriter:
    """The per-event rewrite of the proxy's event path, run synchronously."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rules: RuleSet) -> None:
        self._loop = loop
        self._rules = rules
        self._enricher = Enricher(ks_reader=KsReader())
        self._policy = ForwardingPolicy(
            upstream_host="www.kaltura.com", trusted=parse_networks(["127.0.0.1/32"])
        )

    def __call__(self, request: Request) -> Rewritten:
        headers = request.headers
        recognised = recognise(
            request.method,
            request.target,
            headers.get("Content-Type"),
            request.body or None,
        )
        enrich = self._enricher.enrich(
            self._rules, recognised, headers=headers, host=request.host
        )
        outcomes = self._loop.run_until_complete(enrich)
        return Rewritten(
            recognised.kind,
            outcomes,
            recognised.render_target(),
            recognised.render_body(request.body),
            upstream_headers(headers, PEER, self._policy, keep_length=False),
        )


ALL_ADDED = {"userId": "cookie", "applicationName": "value", "playbackContext": "page"}


def test_benchmark_mwembed_get(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    rewrite = Rewriter(loop, rules_from(tmp_path, BROWSER_RULES))
    request = Request("GET", MWEMBED_STATS_TARGET, make_headers(BROWSER_HEADERS), b"")

    result = benchmark(rewrite, request)

    assert RequestKind.STATS == result.kind
    assert ALL_ADDED == result.added
    # the three segments are appended and every other byte is kept
    expected = "&event:userId=abc123&event:applicationId=Moodle&event:contextId=42"
    assert MWEMBED_STATS_TARGET + expected == result.target
    assert b"" == result.body
    assert [
        ("Host", "www.kaltura.com"),
        ("User-Agent", "Mozilla/5.0"),
        ("Accept", "*/*"),
        ("Referer", "https://moodle.example.edu/x"),
        ("X-Forwarded-For", PEER),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "moodle.example.edu"),
    ] == result.headers


def test_benchmark_kava_post(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    rewrite = Rewriter(loop, rules_from(tmp_path, BROWSER_RULES))
    headers = make_headers(
        (
            *BROWSER_HEADERS,
            ("Content-Type", "application/json"),
            ("Content-Length", "1"),
        )
    )
    request = Request("POST", KAVA_TARGET, headers, KAVA_BODY)

    result = benchmark(rewrite, request)

    assert RequestKind.KAVA == result.kind
    assert ALL_ADDED == result.added
    assert KAVA_TARGET == result.target
    # the body is re-serialised with the three fields added at its end
    expected = b',"userId":"abc123","application":"Moodle","playbackContext":"42"}'
    assert KAVA_BODY[:-1] + expected == result.body
    assert ("Content-Type", "application/json") in result.headers
    assert "Content-Length" not in dict(result.headers)


def test_benchmark_python_client_post(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    (record,) = (
        r for r in load_records("python-client.jsonl") if r.label == PYTHON_CLIENT_LABEL
    )
    rewrite = Rewriter(loop, rules_from(tmp_path, PYTHON_CLIENT_RULES))
    headers = make_headers((*record.headers, ("X-Portal-User", "jdoe@example.edu")))
    request = Request(record.method, record.raw_path, headers, record.body)

    result = benchmark(rewrite, request)

    assert RequestKind.STATS == result.kind
    assert {
        "userId": "header",
        "applicationName": "value",
        "playbackContext": "page",
    } == result.added
    assert record.raw_path == result.target
    # the event object gains the three, as strings like the client's values
    added = {
        "userId": "jdoe@example.edu",
        "applicationId": "PythonClient",
        "contextId": "86401",
    }
    original, sent = orjson.loads(record.body), orjson.loads(result.body)
    assert {**original, "event": {**original["event"], **added}} == sent
    expected = b'"userId":"jdoe@example.edu","applicationId":"PythonClient",'
    assert expected + b'"contextId":"86401"},"kalsig"' in result.body
    assert ("X-Portal-User", "jdoe@example.edu") in result.headers
    assert ("Host", "www.kaltura.com") == result.headers[0]
