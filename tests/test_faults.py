"""Faults injected for real: Kaltura down, hanging, resetting, 500, 429.

A faulty Kaltura on loopback (the stand-in of :mod:`proxy.standin` behind
a switch) and a proxy with a spool. Every event carries its own
``sessionId``, so the tests can say which events Kaltura got, and how many
times: none may be lost, and in these scenarios none may come twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support import REPO

from proxy.serve import RunningProxy
from proxy.standin import StandIn, make_standin_app

ProxyFactory = Callable[..., Awaitable[RunningProxy]]

RULES = """
[kaltura]
partner_id = 1234
widget_ks = false

[[rule]]
name = "gateway"
userId = [{ header = "X-Remote-User" }]
"""


def event(number: int, fmt: str = "1") -> str:
    return (
        "/api_v3/index.php?service=stats&action=collect&format="
        f"{fmt}&event:eventType=3&event:partnerId=1234&event:sessionId=s{number}"
    )


@dataclass
class FaultyKaltura:
    """The stand-in Kaltura, with a switch for what it does to events."""

    standin: StandIn = field(default_factory=StandIn)
    mode: str = "ok"  # ok, reset, hang, midreset, 500, 429
    url: str = ""
    port: int = 0

    def delivered(self) -> Counter[str]:
        """How many times Kaltura took each event, by its sessionId."""
        return Counter(
            str(r.params["event"]["sessionId"])
            for r in self.standin.calls("stats", "collect")
        )

    @web.middleware
    async def switch(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        mode = self.mode
        transport = request.transport
        if mode == "reset" and transport is not None:
            transport.abort()
            await asyncio.sleep(3600)
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "midreset" and transport is not None:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ntru")
            transport.abort()
            await asyncio.sleep(3600)
        if mode in ("500", "429"):
            return web.Response(status=int(mode), text="busy")
        return await handler(request)


@contextlib.asynccontextmanager
async def faulty_kaltura(port: int = 0) -> AsyncIterator[FaultyKaltura]:
    kaltura = FaultyKaltura()
    app = make_standin_app(kaltura.standin)
    app.middlewares.append(kaltura.switch)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    kaltura.port = runner.addresses[0][1]
    kaltura.url = f"http://127.0.0.1:{kaltura.port}"
    try:
        yield kaltura
    finally:
        await runner.cleanup()


@pytest.fixture(name="rules")
def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


async def start_spooling_proxy(
    start_proxy: ProxyFactory, url: str, rules: Path, spool: Path
) -> RunningProxy:
    from proxy.upstream.pool import PoolSettings

    proxy = await start_proxy(
        url,
        rules=rules,
        spool_dir=str(spool),
        pool=PoolSettings(connect_timeout=0.5, total_timeout=0.5),
    )
    assert proxy.app.replayer is not None
    # quick retries for tests: the production waits start at 0.5 s
    proxy.app.replayer._first_wait = 0.05
    proxy.app.replayer._longest_wait = 0.2
    return proxy


async def send(
    session: aiohttp.ClientSession, port: int, number: int, fmt: str = "1"
) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    async with session.get(
        f"http://127.0.0.1:{port}{event(number, fmt)}",
        headers={"X-Remote-User": f"viewer{number}"},
    ) as response:
        return response.status, await response.read(), time.perf_counter() - started


async def until_delivered(kaltura: FaultyKaltura, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(kaltura.delivered()) < count:
        assert time.monotonic() < deadline, (
            f"{len(kaltura.delivered())} of {count} events delivered in {seconds} s"
        )
        await asyncio.sleep(0.05)


async def test_an_outage_loses_nothing_and_the_player_is_answered_throughout(
    start_proxy: ProxyFactory, rules: Path, tmp_path: Path
) -> None:
    async with faulty_kaltura() as kaltura, aiohttp.ClientSession() as session:
        proxy = await start_spooling_proxy(
            start_proxy, kaltura.url, rules, tmp_path / "spool"
        )
        answers = []

        # before, during and after an outage of Kaltura
        for phase, numbers in (("ok", range(0, 10)), ("reset", range(10, 30))):
            kaltura.mode = phase
            for number in numbers:
                answers.append(await send(session, proxy.ports[0], number))
        kaltura.mode = "ok"
        for number in range(30, 40):
            answers.append(await send(session, proxy.ports[0], number))

        await until_delivered(kaltura, 40, 20)
        assert {(200, b"true")} == {(status, body) for status, body, _ in answers}
        delivered = kaltura.delivered()
        assert {f"s{n}" for n in range(40)} == set(delivered)
        assert {1} == set(delivered.values())  # none twice
        assert 0 == len(proxy.app.replayer.spool)  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", ["hang", "midreset", "500", "429"])
async def test_a_misbehaving_kaltura_costs_the_player_at_most_the_timeout(
    start_proxy: ProxyFactory, rules: Path, tmp_path: Path, fault: str
) -> None:
    async with faulty_kaltura() as kaltura, aiohttp.ClientSession() as session:
        proxy = await start_spooling_proxy(
            start_proxy, kaltura.url, rules, tmp_path / "spool"
        )
        kaltura.mode = fault

        answers = [
            await send(session, proxy.ports[0], n, fmt)
            for n, fmt in enumerate(["1", "2", "9&callback=cb"])
        ]
        kaltura.mode = "ok"
        await until_delivered(kaltura, 3, 20)

        # the answers Kaltura gives to accepted events, in each format
        assert [200, 200, 200] == [status for status, _, _ in answers]
        assert b"true" == answers[0][1]
        assert b"<result>1</result>" in answers[1][1]
        assert b"cb(true);" == answers[2][1]
        # a 0.5 s total timeout; a hanging Kaltura costs each player no more
        assert max(seconds for _, _, seconds in answers) < 1.5
        assert {1} == set(kaltura.delivered().values())


async def test_a_kaltura_known_down_is_not_waited_for(
    start_proxy: ProxyFactory, rules: Path, tmp_path: Path
) -> None:
    async with faulty_kaltura() as kaltura, aiohttp.ClientSession() as session:
        proxy = await start_spooling_proxy(
            start_proxy, kaltura.url, rules, tmp_path / "spool"
        )
        kaltura.mode = "hang"
        await send(session, proxy.ports[0], 0)  # waits the timeout, once
        await asyncio.sleep(0.9)  # its replay has failed too: backlogged

        quick = [await send(session, proxy.ports[0], n) for n in range(1, 6)]

        assert max(seconds for _, _, seconds in quick) < 0.3
        kaltura.mode = "ok"
        await until_delivered(kaltura, 6, 20)


# -- process faults: kill -9, SIGTERM under load ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_process(
    rules: Path, spool: Path, upstream_port: int, *extra: str
) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        *("--rules", str(rules), "--spool", str(spool)),
        *("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"),
        *("--upstream", f"http://127.0.0.1:{upstream_port}"),
        *("--upstream-timeout", "0.5", "--log-level", "warning"),
        *extra,
    ]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    return process, port, admin


async def until_ready(session: aiohttp.ClientSession, admin: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("the proxy did not get ready in 20 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@pytest.mark.timeout(90)
async def test_kill_9_while_events_are_spooled_loses_none_of_them(
    rules: Path, tmp_path: Path
) -> None:
    kaltura_port = free_port()  # nothing listens there yet: Kaltura is down
    spool = tmp_path / "spool"
    first, port, admin = serve_process(rules, spool, kaltura_port)
    try:
        async with aiohttp.ClientSession() as session:
            await until_ready(session, admin)
            answers = [await send(session, port, n) for n in range(20)]
        assert {200} == {status for status, _, _ in answers}
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)

    # Kaltura back, the proxy started again on the same spool
    async with faulty_kaltura(kaltura_port) as kaltura:
        second, _, admin = serve_process(rules, spool, kaltura_port)
        try:
            await until_delivered(kaltura, 20, 40)
        finally:
            stop(second)
        assert {f"s{n}" for n in range(20)} == set(kaltura.delivered())


@pytest.mark.timeout(90)
async def test_sigterm_under_load_fails_no_request_in_flight_and_exits_in_time(
    rules: Path, tmp_path: Path
) -> None:
    async with faulty_kaltura() as kaltura:
        process, port, admin = serve_process(
            rules, tmp_path / "spool", kaltura.port, "--grace-period", "5"
        )
        try:
            results: list[tuple[float, str]] = []
            signalled = [0.0]

            async def client(session: aiohttp.ClientSession, first: int) -> None:
                for number in range(first, first + 1000, 16):
                    started = time.monotonic()
                    try:
                        status, _, _ = await send(session, port, number)
                        results.append((started, str(status)))
                    except aiohttp.ClientError as error:
                        results.append((started, type(error).__name__))
                        return

            async with aiohttp.ClientSession() as session:
                await until_ready(session, admin)
                load = [asyncio.ensure_future(client(session, n)) for n in range(16)]
                await asyncio.sleep(1.0)
                signalled[0] = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.gather(*load), 30)
            code = await asyncio.to_thread(process.wait, 10)
            exited = time.monotonic() - signalled[0]
        finally:
            stop(process)

    before = [outcome for started, outcome in results if started < signalled[0] - 0.05]
    assert len(before) > 50
    assert {"200"} == set(before)  # nothing begun before the signal failed
    assert 0 == code
    assert exited < 6.0  # within the 5 s grace period, and then some


@pytest.mark.timeout(90)
async def test_a_second_signal_exits_at_once_and_the_spool_stays_whole(
    rules: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with faulty_kaltura() as kaltura:
        kaltura.mode = "reset"
        process, port, admin = serve_process(
            rules, spool, kaltura.port, "--grace-period", "30"
        )
        try:
            async with aiohttp.ClientSession() as session:
                await until_ready(session, admin)
                answers = [await send(session, port, n) for n in range(10)]
                # keep a download in flight so that the first stop must wait
                kaltura.mode = "hang"
                pending = asyncio.ensure_future(
                    session.get(f"http://127.0.0.1:{port}/p/1234/flavor/a.mp4")
                )
                await asyncio.sleep(0.1)
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 10)
                exited = time.monotonic() - signalled
                with contextlib.suppress(aiohttp.ClientError):
                    (await pending).close()
        finally:
            stop(process)
        assert {200} == {status for status, _, _ in answers}
        assert 1 == code and exited < 5  # not the 30 s grace period

        # started again: every event its player was answered for arrives
        kaltura.mode = "ok"
        again, _, _ = serve_process(rules, spool, kaltura.port)
        try:
            await until_delivered(kaltura, 10, 40)
        finally:
            stop(again)
        assert {f"s{n}" for n in range(10)} <= set(kaltura.delivered())
