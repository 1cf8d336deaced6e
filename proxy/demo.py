"""``kstats-proxy demo``: the whole product on one machine, offline.

It starts the stand-in Kaltura API (:mod:`proxy.standin`, knowing a few
categories and the demo partner's admin secret), stand-ins of the legacy
applications' who-am-I pages (:mod:`proxy.legacy_standin`, the shipped
rules' lookups pointed at them) and the real proxy with the shipped
rules, all on 127.0.0.1. It sends one recorded event of each legacy
integration through the proxy, and prints, per event, each field before
and after with the rule and source that gave it, what Kaltura received,
and what the player got back.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.app import ProxySettings
from proxy.explain import EventReport, explain_request
from proxy.kaltura.ks import AdminSecrets
from proxy.kaltura.recognise import recognise
from proxy.kaltura.session import KsReader
from proxy.legacy_standin import LegacySessions, make_legacy_app, point_lookups_at
from proxy.metrics import Metrics
from proxy.records import TrafficRecord, read_records
from proxy.remote import RemoteServices
from proxy.rules.loader import load_rules
from proxy.serve import ServeConfig, start
from proxy.standin import RecordedRequest, StandIn, make_standin_app

# A made-up admin secret for the demo partner, known to the stand-in only.
DEMO_SECRETS = AdminSecrets({1234: ["demo-admin-secret-0123456789abcdef"]})
# What the stand-in Kaltura knows: the demo entry is in a MediaSpace
# channel, a Moodle course category and a Blackboard one.
DEMO_CATEGORIES = {
    86091: "MediaSpace>site>channels>Biology 101",
    86211: "Moodle>site>channels>42",
    86401: "Blackboard>site>channels>_123_1",
}
# The demo's who-am-I answers, for the recorded sessions
DEMO_SESSIONS = {
    "moodle": {"r4nd0m5e55i0n1d": "frank"},
    "sharepoint": {"77u/PD94bWwgdmVyc2lvbj0iMS4wIj8+PFNQPjA": "i:0#.f|membership|erin"},
}


def shipped_rules() -> Path:
    """The rules directory that ships with the package."""
    return Path(str(resources.files("proxy") / "shipped_rules"))


def demo_traffic() -> list[TrafficRecord]:
    """One recorded event per legacy integration."""
    return list(read_records(str(resources.files("proxy") / "demo_traffic.jsonl")))


def _show(value: str | None) -> str:
    return "-" if value is None else value


async def _send(
    session: aiohttp.ClientSession, port: int, record: TrafficRecord
) -> tuple[int, str]:
    url = URL(f"http://127.0.0.1:{port}{record.raw_path}", encoded=True)
    headers = [(k, v) for k, v in record.headers if k.lower() != "content-length"]
    async with session.request(
        record.method, url, headers=headers, data=record.body or None
    ) as response:
        return response.status, await response.text()


Address = tuple[str, int]


async def run_demo(
    out: TextIO = sys.stdout,
    rules_path: Path | None = None,
    *,
    serve: tuple[Address, Address] | None = None,
    rounds: int | None = None,
    every: float = 5.0,
) -> int:
    """Run the demo, printing to ``out``; returns the process exit code.

    With ``serve`` (the public and admin addresses) the proxy stays up
    afterwards and the demo traffic is sent again every ``every`` seconds,
    quietly, for ``rounds`` more rounds or until cancelled (Ctrl-C).
    """
    listen, admin_listen = serve or (("127.0.0.1", 0), ("127.0.0.1", 0))
    shipped = rules_path or shipped_rules()
    work = tempfile.TemporaryDirectory(prefix="kstats-demo-")

    # the stand-ins: Kaltura, and the legacy applications' who-am-I pages
    standin = StandIn(admin_secrets=DEMO_SECRETS, categories=dict(DEMO_CATEGORIES))
    standin.entry_categories["0_abcd1234"] = sorted(DEMO_CATEGORIES)
    runner = web.AppRunner(make_standin_app(standin), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sessions = LegacySessions(
        moodle=DEMO_SESSIONS["moodle"], sharepoint=DEMO_SESSIONS["sharepoint"]
    )
    legacy = web.AppRunner(make_legacy_app(sessions), access_log=None)
    await legacy.setup()
    await web.TCPSite(legacy, "127.0.0.1", 0).start()
    legacy_url = f"http://127.0.0.1:{legacy.addresses[0][1]}"

    # the shipped rules, their lookups asking the stand-ins, and the proxy
    rules_dir = point_lookups_at(shipped, legacy_url, Path(work.name) / "rules")
    rules = load_rules(rules_dir)
    running = await start(
        ServeConfig(
            rules_path=str(rules_dir),
            listen=listen,
            admin_listen=admin_listen,
            proxy=ProxySettings(upstream_url=upstream),
            admin_secrets=DEMO_SECRETS,
            reload_interval=0,
        )
    )
    services = RemoteServices(
        upstream_url=upstream,
        admin_secrets=DEMO_SECRETS,
        metrics=Metrics(CollectorRegistry()),
    )
    print(
        f"kstats-proxy demo: {len(rules.rules)} rules from {shipped}\n"
        f"proxy on 127.0.0.1:{running.ports[0]}, stand-in Kaltura on {upstream},\n"
        f"stand-in Moodle and SharePoint who-am-I pages on {legacy_url}\n",
        file=out,
    )

    failures = 0
    try:
        async with aiohttp.ClientSession() as session:
            for record in demo_traffic():
                explanation = await explain_request(
                    rules,
                    KsReader(),
                    method=record.method,
                    target=record.raw_path,
                    headers=record.headers,
                    body=record.body,
                    services=services,
                )
                status, answer = await _send(session, running.ports[0], record)
                received = _last_forwarded(standin)
                failures += status != 200
                _print_event(out, record, explanation.events[0], received.target)
                print(f"  player got       {status} {answer.strip()[:70]}\n", file=out)
            if serve is not None:
                await _keep_serving(out, session, running.ports, rounds, every)
    finally:
        await running.stop(1.0)
        await services.close()
        await legacy.cleanup()
        await runner.cleanup()
        work.cleanup()
    return 1 if failures else 0


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def _keep_serving(
    out: TextIO,
    session: aiohttp.ClientSession,
    ports: tuple[int, int],
    rounds: int | None,
    every: float,
) -> None:
    public, admin = ports
    print(
        f"serving: the proxy on 127.0.0.1:{public}; /metrics and /status on "
        f"127.0.0.1:{admin}. The demo traffic goes again every {every:g} s; "
        "Ctrl-C stops.",
        file=out,
        flush=True,
    )
    sent = 0
    while rounds is None or sent < rounds:
        await asyncio.sleep(every)
        for record in demo_traffic():
            status, _ = await _send(session, public, record)
            if status != 200:
                print(f"{record.label}: the proxy answered {status}", file=out)
        sent += 1
    status, _ = await _get(session, f"http://127.0.0.1:{admin}/status")
    print(f"after {sent} more rounds: /status answered {status}", file=out)


# the calls the proxy makes for itself, not the player's
_OWN_CALLS = frozenset({"session", "category", "categoryentry"})


def _last_forwarded(standin: StandIn) -> RecordedRequest:
    """The last request the stand-in got from a player, through the proxy."""
    return next(
        r
        for r in reversed(standin.received)
        if str(r.params.get("service", "")).lower() not in _OWN_CALLS
    )


def _print_event(
    out: TextIO, record: TrafficRecord, report: EventReport, sent: str
) -> None:
    print(f"{record.label}  (event type {report.event_type})", file=out)
    print(f"  page             {_show(report.page)}", file=out)
    print(f"  rules matched    {', '.join(report.matched) or '-'}", file=out)
    # the values as Kaltura received them, decoded per the client's encoding
    arrived = recognise("GET", sent, None, None).events
    for field in report.fields:
        after = arrived[0].get(field.field) if arrived else field.after
        how = (
            field.source if field.rule is None else f"{field.source}, rule {field.rule}"
        )
        changed = "->" if field.before != after else "  "
        print(
            f"  {field.field:<16} {_show(field.before):<20} {changed} "
            f"{_show(after):<20} ({how})",
            file=out,
        )
    added = sent[len(record.raw_path) :] if sent.startswith(record.raw_path) else sent
    print(f"  Kaltura got      ...{added or ' (unchanged)'}", file=out)


def main(serve: tuple[Address, Address] | None = None) -> int:
    try:
        return asyncio.run(run_demo(serve=serve))
    except KeyboardInterrupt:
        return 0
