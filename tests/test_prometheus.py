"""A real Prometheus scraping a running proxy, and promtool on its exposition.

The proxy runs the shipped rules in front of the stand-in Kaltura; the
demo traffic (one event of each legacy integration) flows through it
while Prometheus (Debian's ``prometheus``) scrapes the admin port every
second. The coverage expressions of the README are then asked of
Prometheus over its HTTP API, and so is every query of the shipped
Grafana dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ProxyFactory, Upstream
from deploy.test_prometheus_rules import dashboard_expressions
from support import send_raw

from proxy.demo import demo_traffic
from proxy.serve import RunningProxy

# README, "Admin listener": the share of events that left with each field
COVERAGE_SINCE_START = (
    'sum by (field) (kstats_enrichments_total{source!~"none|invalid"})'
    ' / sum by (field) (kstats_enrichments_total{source!="invalid"})'
)
COVERAGE_RECENT = (
    'sum by (field) (rate(kstats_enrichments_total{source!~"none|invalid"}[1m]))'
    ' / sum by (field) (rate(kstats_enrichments_total{source!="invalid"}[1m]))'
)
# The demo's six events under the shipped rules, checked by hand against
# `kstats-proxy demo`: each has a user (four from gateway headers, two of
# their own) and an application; four have a category from their page or
# a table (the Moodle one needs the entry's category, which needs an admin
# secret, and the non-Kaltura page has none).
EXPECTED = {"userId": 1.0, "applicationName": 1.0, "playbackContext": 4 / 6}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(scraped_port: int, work: Path) -> AsyncIterator[str]:
    """A Prometheus on loopback scraping ``scraped_port`` every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (.ci/run does)")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: kstats\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{scraped_port}']}}]\n"
    )
    port = free_port()
    with (work / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def query(session: aiohttp.ClientSession, url: str, expr: str) -> Any:
    async with session.get(f"{url}/api/v1/query", params={"query": expr}) as response:
        answer = await response.json()
    assert "success" == answer["status"], (expr, answer)
    return answer["data"]["result"]


async def send_demo_traffic(proxy: RunningProxy) -> None:
    for record in demo_traffic():
        response = await send_raw(proxy.ports[0], _request(record))
        assert 200 == response.status


def _request(record: Any) -> bytes:
    head = f"{record.method} {record.raw_path} HTTP/1.1\r\n"
    headers = "".join(f"{name}: {value}\r\n" for name, value in record.headers)
    return (head + headers + "\r\n").encode() + record.body


async def until(
    session: aiohttp.ClientSession, url: str, expr: str, rows: int, seconds: float
) -> list[dict[str, Any]]:
    """The result of ``expr`` once it has ``rows`` rows, asking every 0.25 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            result: list[dict[str, Any]] = await query(session, url, expr)
            if len(result) >= rows:
                return result
        assert loop.time() < deadline, f"no {rows} rows for {expr} in {seconds} s"
        await asyncio.sleep(0.25)


def coverage(result: list[dict[str, Any]]) -> dict[str, float]:
    return {row["metric"]["field"]: float(row["value"][1]) for row in result}


@pytest.mark.timeout(90)
async def test_prometheus_reads_the_coverage_of_each_field_while_traffic_flows(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url)
    await send_demo_traffic(proxy)

    async with (
        prometheus(proxy.ports[1], tmp_path) as url,
        aiohttp.ClientSession() as session,
    ):
        since_start = await until(session, url, COVERAGE_SINCE_START, 3, 30)
        assert EXPECTED == pytest.approx(coverage(since_start))

        # the rate form needs traffic across two scrapes at least
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        recent: list[dict[str, Any]] = []
        while len(recent) < 3 and loop.time() < deadline:
            await send_demo_traffic(proxy)
            await asyncio.sleep(0.5)
            recent = [
                row
                for row in await query(session, url, COVERAGE_RECENT)
                if not math.isnan(float(row["value"][1]))
            ]
        assert EXPECTED == pytest.approx(coverage(recent))

        # every query of the shipped dashboard runs (query() checks the
        # status), and those of the traffic this test made answer
        silent = []
        for expr in dashboard_expressions():
            concrete = (
                expr.replace("$job", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
            )
            if not await query(session, url, concrete):
                silent.append(expr)
        busy = ("kstats_enrichments", "kstats_events", "duration_seconds")
        assert [] == [e for e in silent if any(m in e for m in busy)]


async def test_promtool_finds_nothing_wrong_in_the_live_exposition(
    upstream: Upstream, start_proxy: ProxyFactory
) -> None:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does)")
    proxy = await start_proxy(upstream.url)
    await send_demo_traffic(proxy)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proxy.ports[1]}/metrics") as response,
    ):
        exposition = await response.read()

    result = subprocess.run(
        [binary, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, (result.stdout + result.stderr).decode()
    assert b"kstats_enrichments_total" in exposition
