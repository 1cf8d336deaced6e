"""``kstats-proxy demo``: the whole product on one machine, offline.

It starts the stand-in Kaltura API (:mod:`proxy.standin`) and the real
proxy with the shipped rules, both on 127.0.0.1, sends one recorded event
of each legacy integration through the proxy, and prints, per event, each
field before and after with the rule and source that gave it, what
Kaltura received, and what the player got back.
"""

from __future__ import annotations

import asyncio
import sys
from importlib import resources
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.app import ProxySettings
from proxy.explain import EventReport, explain_request
from proxy.kaltura.recognise import recognise
from proxy.kaltura.session import KsReader
from proxy.records import TrafficRecord, read_records
from proxy.rules.loader import load_rules
from proxy.serve import ServeConfig, start
from proxy.standin import StandIn, make_standin_app


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


async def run_demo(out: TextIO = sys.stdout, rules_path: Path | None = None) -> int:
    """Run the demo, printing to ``out``; returns the process exit code."""
    rules_path = rules_path or shipped_rules()
    rules = load_rules(rules_path)

    # the stand-in Kaltura, then the proxy in front of it
    standin = StandIn()
    runner = web.AppRunner(make_standin_app(standin), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    running = await start(
        ServeConfig(
            rules_path=str(rules_path),
            listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            proxy=ProxySettings(upstream_url=upstream),
        )
    )
    print(
        f"kstats-proxy demo: {len(rules.rules)} rules from {rules_path}\n"
        f"proxy on 127.0.0.1:{running.ports[0]}, stand-in Kaltura on {upstream}\n",
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
                )
                status, answer = await _send(session, running.ports[0], record)
                received = standin.received[-1]
                failures += status != 200
                _print_event(out, record, explanation.events[0], received.target)
                print(f"  player got       {status} {answer.strip()[:70]}\n", file=out)
    finally:
        await running.stop(1.0)
        await runner.cleanup()
    return 1 if failures else 0


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


def main() -> int:
    return asyncio.run(run_demo())
