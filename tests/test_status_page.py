"""``/status`` in a real browser: headless Chromium loads it from a running proxy.

Chromium (Debian's ``chromium``) renders the page, saves a screenshot, and
prints the DOM it built; the assertions read what a person would see.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import ProxyFactory, Upstream
from test_prometheus import send_demo_traffic

from proxy.serve import RunningProxy

# TOOLING.md: the flags that work on these machines
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


async def chromium(*arguments: str) -> bytes:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is missing: apt-get install chromium (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="kstats-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert 0 == process.returncode
    return out


def status_url(proxy: RunningProxy) -> str:
    return f"http://127.0.0.1:{proxy.ports[1]}/status"


@pytest.mark.timeout(120)
async def test_a_browser_shows_the_coverage_bars_of_the_demo_traffic(
    upstream: Upstream, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await start_proxy(upstream.url)
    await send_demo_traffic(proxy)
    screenshot = tmp_path / "status.png"  # kept by pytest under its basetemp

    await chromium(
        "--window-size=1100,900", f"--screenshot={screenshot}", status_url(proxy)
    )
    dom = (await chromium("--dump-dom", status_url(proxy))).decode()

    # a real picture was drawn
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000

    # the six demo events: all with a user and an application, four with a
    # category (see tests/test_prometheus.py for the hand count)
    rows = re.findall(
        r"<tr><td>([^<]+)</td><td class=\"count\">(\d+)</td>(.*?)</tr>", dom
    )
    by_name = {
        name: (int(count), re.findall(r'aria-label="([\d.]+)%"', bars))
        for name, count, bars in rows
    }
    assert (6, ["100.0", "100.0", "66.7"]) == by_name["all events"]
    assert (6, ["100.0", "100.0", "66.7"]) == by_name["stats"]
    assert (1, ["100.0", "100.0", "100.0"]) == by_name["sakai"]
    assert (1, ["100.0", "100.0", "0.0"]) == by_name["moodle"]
    assert (6, ["100.0", "100.0", "66.7"]) == by_name["other-pages"]
    assert "report fields coverage" in dom
