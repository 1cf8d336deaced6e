"""Network sources through a running proxy: a legacy application and Kaltura.

Everything is real HTTP on 127.0.0.1: the proxy (the real assembly), a
stand-in Kaltura API (:mod:`proxy.standin`, which checks the admin KS it
gets) and, written here, a stand-in legacy application whose who-am-I page
answers only for a valid session cookie and can be made slow or failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ProxyFactory, Upstream

from proxy.kaltura.ks import SESSION_TYPE_ADMIN, AdminSecrets, parse_ks
from proxy.serve import RunningProxy

SECRET = "0123456789abcdef0123456789abcdef"
SECRETS = AdminSecrets({1234: [SECRET]})
EVENT = (
    "/api_v3/index.php?service=stats&action=collect&event:eventType=3"
    "&event:partnerId=1234&event:entryId=0_abcd1234"
)


@dataclass
class LegacyApp:
    """A who-am-I page: 200 JSON for a known session, 401 for anyone else."""

    sessions: dict[str, str] = field(default_factory=lambda: {"s3ss10n": "alice"})
    delay: float = 0.0
    status: int | None = None  # force this status
    calls: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def whoami(self, request: web.Request) -> web.Response:
        self.calls.append(dict(request.headers))
        await asyncio.sleep(self.delay)
        if self.status is not None:
            return web.Response(status=self.status, text="broken")
        user = self.sessions.get(request.cookies.get("MoodleSession", ""))
        if user is None:
            return web.Response(status=401)
        return web.json_response(
            {"id": 7, "username": user, "profile": {"login": f"i:0#.f|m|{user}"}},
            headers={"Set-Cookie": "MoodleSession=renewed"},
        )


@pytest.fixture(name="legacy")
async def _legacy() -> AsyncIterator[LegacyApp]:
    app_state = LegacyApp()
    app = web.Application()
    app.router.add_get("/local/whoami/", app_state.whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app_state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/local/whoami/"
    yield app_state
    await runner.cleanup()


def lookup_rules(tmp_path: Path, legacy: LegacyApp, **lookup: str) -> Path:
    settings = {"ttl": '"10m"', "timeout": '"300ms"', **lookup}
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    path = tmp_path / "rules.toml"
    path.write_text(
        f"""
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "moodle"
userId = [{{ cookie = "MoodleSession", lookup = "moodle-whoami" }}]

[lookup.moodle-whoami]
url = "{legacy.url}"
forward_cookies = ["MoodleSession"]
field = "username"
{extra}"""
    )
    return path


async def send_event(
    proxy: RunningProxy, target: str = EVENT, **headers: str
) -> tuple[int, float]:
    """One event through the proxy: its status and how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    url = f"http://127.0.0.1:{proxy.ports[0]}{target}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers) as response,
    ):
        await response.read()
        return response.status, loop.time() - started


def collected(upstream: Upstream) -> list[dict[str, Any]]:
    """The events of every stats.collect the stand-in Kaltura got, in order."""
    return [r.params["event"] for r in upstream.standin.calls("stats", "collect")]


def source_calls(proxy: RunningProxy, source: str, outcome: str) -> int:
    return proxy.app.metrics.source_calls.value(source, outcome)


COOKIES = "theme=dark; MoodleSession=s3ss10n; MOODLEID1_=%25F1"


# -- lookup ------------------------------------------------------------------


async def test_lookup_adds_the_user_sending_only_the_named_cookie(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=lookup_rules(tmp_path, legacy))

    status, _ = await send_event(proxy, Cookie=COOKIES)

    assert 200 == status
    assert "alice" == collected(upstream)[0]["userId"]
    (call,) = legacy.calls
    assert "MoodleSession=s3ss10n" == call["Cookie"]
    assert "X-Forwarded-For" not in call


async def test_lookup_answers_are_kept_per_cookie_and_asked_again_after_the_ttl(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    rules = lookup_rules(tmp_path, legacy, ttl='"300ms"')
    proxy = await start_proxy(upstream.url, rules=rules)

    for _ in range(3):
        await send_event(proxy, Cookie=COOKIES)
    assert 1 == len(legacy.calls)
    assert 2 == source_calls(proxy, "lookup", "hit")

    await asyncio.sleep(0.4)
    await send_event(proxy, Cookie=COOKIES)
    assert 2 == len(legacy.calls)
    assert ["alice"] * 4 == [event["userId"] for event in collected(upstream)]

    # another viewer is another key
    legacy.sessions["0th3r"] = "bob"
    await send_event(proxy, Cookie="MoodleSession=0th3r")
    assert 3 == len(legacy.calls)
    assert "bob" == collected(upstream)[-1]["userId"]


async def test_concurrent_events_of_one_viewer_share_one_lookup(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    legacy.delay = 0.15
    proxy = await start_proxy(upstream.url, rules=lookup_rules(tmp_path, legacy))

    results = await asyncio.gather(
        *(send_event(proxy, Cookie=COOKIES) for _ in range(10))
    )

    assert {200} == {status for status, _ in results}
    assert 1 == len(legacy.calls)
    assert ["alice"] * 10 == [event["userId"] for event in collected(upstream)]
    assert 9 == source_calls(proxy, "lookup", "shared")


async def test_a_slow_application_costs_an_event_its_timeout_not_the_event(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    legacy.delay = 1.5
    rules = lookup_rules(tmp_path, legacy, timeout='"100ms"')
    proxy = await start_proxy(upstream.url, rules=rules)

    status, seconds = await send_event(proxy, Cookie=COOKIES)

    assert 200 == status
    assert seconds < 1.0
    (event,) = collected(upstream)
    assert "userId" not in event
    assert 1 == source_calls(proxy, "lookup", "timeout")


@pytest.mark.parametrize("answer", [500, 302])
async def test_a_failing_application_costs_the_field_and_is_not_asked_again_at_once(
    upstream: Upstream,
    start_proxy: ProxyFactory,
    legacy: LegacyApp,
    tmp_path: Path,
    answer: int,
) -> None:
    legacy.status = answer
    proxy = await start_proxy(upstream.url, rules=lookup_rules(tmp_path, legacy))

    for _ in range(2):
        status, _ = await send_event(proxy, Cookie=COOKIES)
        assert 200 == status

    assert 1 == len(legacy.calls)
    assert all("userId" not in event for event in collected(upstream))
    assert 2 == source_calls(proxy, "lookup", "failed")


async def test_an_unknown_session_means_nobody_and_no_cookie_means_no_call(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url, rules=lookup_rules(tmp_path, legacy))

    await send_event(proxy, Cookie="MoodleSession=expired")
    await send_event(proxy, Cookie="theme=dark")

    assert 1 == len(legacy.calls)
    assert all("userId" not in event for event in collected(upstream))


async def test_a_lookup_reads_a_nested_field_through_its_pattern(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    rules = lookup_rules(
        tmp_path, legacy, field='"profile.login"', pattern="'\\|([^|]+)$'"
    )
    rules.write_text(rules.read_text().replace('field = "username"\n', ""))
    proxy = await start_proxy(upstream.url, rules=rules)

    await send_event(proxy, Cookie=COOKIES)

    assert "alice" == collected(upstream)[0]["userId"]


# -- category and entry_category ----------------------------------------------


def kaltura_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(
        """
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "moodle-course"
when.page = 'course/view\\.php'
playbackContext = [
  { page = 'course/view\\.php\\?id=(\\d+)', category = "Moodle>site>channels>{1}" },
]

[[rule]]
name = "blackboard"
when.page = 'webapps/blackboard'
playbackContext = [{ entry_category = "Blackboard>site>channels>" }]
"""
    )
    return path


@pytest.fixture(name="kaltura")
def _kaltura(upstream: Upstream) -> Upstream:
    standin = upstream.standin
    standin.secrets = SECRETS
    standin.categories.update(
        {
            11: "Moodle>site>channels>42",
            12: "Moodle>site>channels>43",
            21: "Blackboard>site>channels>_123_1",
            22: "Blackboard>site>galleries>Biology",
            23: "Blackboard>site>channels>_124_1",
        }
    )
    standin.entry_categories.update(
        {"0_abcd1234": [22, 21], "0_twochans": [21, 23], "0_gallery": [22]}
    )
    return upstream


MOODLE_PAGE = "https://moodle.example.edu/course/view.php?id=42"


async def test_category_resolves_the_course_page_to_its_category_id(
    kaltura: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(
        kaltura.url, rules=kaltura_rules(tmp_path), admin_secrets=SECRETS
    )

    for _ in range(2):
        await send_event(proxy, Referer=MOODLE_PAGE)

    assert ["11", "11"] == [e["contextId"] for e in collected(kaltura)]
    (call,) = kaltura.standin.calls("category", "list")
    assert {"fullNameEqual": "Moodle>site>channels>42"}.items() <= call.params[
        "filter"
    ].items()
    session = parse_ks(call.params["ks"], SECRETS)
    assert session is not None and session.verified
    assert SESSION_TYPE_ADMIN == session.session_type


async def test_an_unknown_course_is_remembered_briefly_and_adds_nothing(
    kaltura: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(
        kaltura.url, rules=kaltura_rules(tmp_path), admin_secrets=SECRETS
    )
    page = "https://moodle.example.edu/course/view.php?id=999"

    for _ in range(2):
        await send_event(proxy, Referer=page)

    assert all("contextId" not in e for e in collected(kaltura))
    assert 1 == len(kaltura.standin.calls("category", "list"))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("0_abcd1234", "21"),  # one channel and a gallery: the channel
        ("0_twochans", None),  # two channels: no way to choose
        ("0_gallery", None),  # no channel
    ],
)
async def test_entry_category_yields_the_one_category_under_the_prefix(
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    entry: str,
    expected: str | None,
) -> None:
    proxy = await start_proxy(
        kaltura.url, rules=kaltura_rules(tmp_path), admin_secrets=SECRETS
    )
    target = EVENT.replace("0_abcd1234", entry)
    page = "https://bb.example.edu/webapps/blackboard/execute/launcher"

    for _ in range(2):
        await send_event(proxy, target, Referer=page)

    assert [expected] * 2 == [e.get("contextId") for e in collected(kaltura)]
    (link_call,) = kaltura.standin.calls("categoryEntry", "list")
    assert entry == link_call.params["filter"]["entryIdEqual"]


async def test_without_an_admin_secret_category_sources_ask_nothing(
    kaltura: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(kaltura.url, rules=kaltura_rules(tmp_path))

    await send_event(proxy, Referer=MOODLE_PAGE)

    assert "contextId" not in collected(kaltura)[0]
    assert [] == kaltura.standin.calls("category", "list")
    assert 1 == source_calls(proxy, "category", "no_secret")


async def test_the_admin_ks_goes_to_kaltura_calls_only(
    kaltura: Upstream,
    start_proxy: ProxyFactory,
    legacy: LegacyApp,
    tmp_path: Path,
) -> None:
    rules = kaltura_rules(tmp_path)
    lookup = lookup_rules(tmp_path / "..", legacy).read_text()
    rules.write_text(
        rules.read_text()
        + lookup.split("widget_ks = false\n", 1)[1].replace('"moodle"', '"user"')
    )
    proxy = await start_proxy(kaltura.url, rules=rules, admin_secrets=SECRETS)

    await send_event(proxy, Referer=MOODLE_PAGE, Cookie=COOKIES)

    (call,) = kaltura.standin.calls("category", "list")
    admin_ks = call.params["ks"]
    (collect,) = kaltura.standin.calls("stats", "collect")
    assert admin_ks not in collect.target and admin_ks.encode() not in collect.body
    assert "?" not in call.target.replace("?format=1", "")  # in the body only
    assert all(admin_ks not in str(headers) for headers in legacy.calls)
    assert "alice" == collect.params["event"]["userId"]


async def test_an_answer_that_arrives_in_pieces_is_read_whole(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    async def slow_whoami(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": 7, "user')
        await asyncio.sleep(0.05)
        await response.write(b'name": "alice"}')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/local/whoami/", slow_whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        legacy = LegacyApp(
            url=f"http://127.0.0.1:{runner.addresses[0][1]}/local/whoami/"
        )
        proxy = await start_proxy(upstream.url, rules=lookup_rules(tmp_path, legacy))
        await send_event(proxy, Cookie=COOKIES)
    finally:
        await runner.cleanup()

    assert "alice" == collected(upstream)[0]["userId"]


async def test_a_reload_that_changes_a_lookup_drops_its_old_cache(
    upstream: Upstream, start_proxy: ProxyFactory, legacy: LegacyApp, tmp_path: Path
) -> None:
    rules = lookup_rules(tmp_path, legacy)
    proxy = await start_proxy(upstream.url, rules=rules)
    await send_event(proxy, Cookie=COOKIES)
    assert 1 == len(proxy.app.services._lookups)

    rules.write_text(rules.read_text().replace('ttl = "10m"', 'ttl = "5m"'))
    assert await proxy.watcher.reload_now()
    await send_event(proxy, Cookie=COOKIES)

    (settings,) = proxy.app.services._lookups
    assert 300 == settings.ttl
    assert 2 == len(legacy.calls)  # the new settings start a cache afresh
