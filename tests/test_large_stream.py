"""Large downloads through a proxy process: every byte, in flat memory.

The upstream and the proxy each run as their own process. The upstream
generates the body as it sends it (64 KiB blocks, each starting with its
own counter, so a lost, repeated or reordered block changes the checksum)
and prints the SHA-256 of what it sent. The test downloads through the
proxy in chunks, hashes and counts what arrives, and samples the proxy's
resident memory (VmRSS) while the download runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from support import REPO, RULES

MIB = 1 << 20
GIB = 1 << 30

UPSTREAM_SCRIPT = """\
import asyncio, hashlib, struct, sys
from aiohttp import web

BLOCK = 1 << 16
BASE = bytes(range(256)) * (BLOCK // 256)

async def download(request):
    total = int(request.match_info["size"])
    response = web.StreamResponse(
        headers={"Content-Type": "video/mp4", "Content-Length": str(total)}
    )
    await response.prepare(request)
    digest = hashlib.sha256()
    sent = 0
    index = 0
    while sent < total:
        block = (struct.pack(">Q", index) + BASE[8:])[: total - sent]
        digest.update(block)
        await response.write(block)
        sent += len(block)
        index += 1
    await response.write_eof()
    print("sent", sent, digest.hexdigest(), flush=True)
    return response

async def small(request):
    return web.Response(text="warm")

async def main():
    app = web.Application()
    app.router.add_get("/p/1234/serveFlavor/{size:[0-9]+}.mp4", download)
    app.router.add_get("/crossdomain.xml", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("port", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

PROXY_SCRIPT = """\
import asyncio, sys
from proxy.app import ProxySettings
from proxy.serve import ServeConfig, run

rules, port, admin_port, upstream = sys.argv[1:5]
config = ServeConfig(
    rules_path=rules,
    listen=("127.0.0.1", int(port)),
    admin_listen=("127.0.0.1", int(admin_port)),
    proxy=ProxySettings(upstream_url=upstream),
    grace_period=1.0,
)
asyncio.run(run(config))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid``, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS on a thread until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            self.peak = max(self.peak, rss_bytes(self.pid))


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """End a process this test started, by its pid: TERM, then KILL."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def start_script(
    script: Path, args: list[str], stderr: Path, *, stdout: int
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stderr.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=REPO,
            stdout=stdout,
            stderr=errors,
            env=env,
        )


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    assert result and result[0], f"no output from pid {process.pid} in {timeout} s"
    return result[0].decode().strip()


async def wait_ready(
    admin_port: int, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 20
    url = f"http://127.0.0.1:{admin_port}/readyz"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"proxy not ready in 20 s: {log.read_text()[-2000:]}")


@dataclass
class Download:
    size: int
    sha256: str
    seconds: float


async def download(url: str, pause_after: int | None = None) -> Download:
    """Download ``url``; with ``pause_after``, stop reading for 2 s there."""
    digest = hashlib.sha256()
    size = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        started = time.perf_counter()
        async with session.get(url) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
                if pause_after is not None and size >= pause_after:
                    pause_after = None
                    await asyncio.sleep(2)
        return Download(size, digest.hexdigest(), time.perf_counter() - started)


async def stream_through_proxy_process(
    tmp_path: Path, total: int, max_growth: int, pause_after: int | None = None
) -> None:
    upstream_script = tmp_path / "upstream.py"
    upstream_script.write_text(UPSTREAM_SCRIPT)
    proxy_script = tmp_path / "proxy_serve.py"
    proxy_script.write_text(PROXY_SCRIPT)

    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream = start_script(
            upstream_script, [], tmp_path / "upstream.err", stdout=subprocess.PIPE
        )
        processes.append(upstream)
        upstream_port = int(read_line(upstream, 20).removeprefix("port "))

        port, admin_port = free_port(), free_port()
        proxy_log = tmp_path / "proxy.err"
        args = [
            str(RULES),
            str(port),
            str(admin_port),
            f"http://127.0.0.1:{upstream_port}",
        ]
        proxy = start_script(proxy_script, args, proxy_log, stdout=subprocess.DEVNULL)
        processes.append(proxy)
        await wait_ready(admin_port, proxy, proxy_log)

        # warm the pass-through client once, then take the baseline
        warm_url = f"http://127.0.0.1:{port}/crossdomain.xml"
        async with aiohttp.ClientSession() as session, session.get(warm_url) as warm:
            assert warm.status == 200
            await warm.read()
        baseline = rss_bytes(proxy.pid)

        url = f"http://127.0.0.1:{port}/p/1234/serveFlavor/{total}.mp4"
        with RssSampler(proxy.pid).running() as sampler:
            received = await download(url, pause_after)

        sent_line = read_line(upstream, 30).split()
        assert sent_line[:2] == ["sent", str(total)]
        growth = sampler.peak - baseline
        throughput = received.size / MIB / received.seconds
        print(
            f"\n{total // MIB} MiB through the proxy process in {received.seconds:.2f} s"
            f" ({throughput:.0f} MiB/s); proxy RSS baseline {baseline / MIB:.1f} MiB,"
            f" peak {sampler.peak / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB"
            f" ({sampler.samples} samples)"
        )
        assert received.size == total
        assert received.sha256 == sent_line[2]
        assert growth < max_growth, f"proxy RSS grew {growth / MIB:.1f} MiB"
    finally:
        for process in reversed(processes):
            stop_process(process)


@pytest.mark.timeout(300)
async def test_256_mib_download_streams_exact_bytes_in_flat_memory(
    tmp_path: Path,
) -> None:
    await stream_through_proxy_process(tmp_path, 256 * MIB, max_growth=48 * MIB)


@pytest.mark.timeout(300)
async def test_a_player_that_stops_reading_holds_the_proxy_to_a_small_read_ahead(
    tmp_path: Path,
) -> None:
    # the upstream could send the rest in the pause; the proxy reads on
    # only as far as its buffers allow
    await stream_through_proxy_process(
        tmp_path, 64 * MIB, max_growth=8 * MIB, pause_after=8 * MIB
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_1_gib_download_streams_exact_bytes_in_flat_memory(
    tmp_path: Path,
) -> None:
    await stream_through_proxy_process(tmp_path, GIB, max_growth=64 * MIB)
