"""Hot reload: rules, tables and ConfigMap swaps picked up while serving.

Each test runs a real proxy on rules written to ``tmp_path`` and watched
every 50 ms, changes the files, waits (bounded) for the watcher, and sends
a KAVA event through the proxy to see which rules it was enriched by.

Successive contents of a file differ in length in these tests: the
watcher compares sizes and modification times, and two writes within one
tick of the file system's clock would otherwise look alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from support import KAVA_TARGET, send_raw

from proxy.kaltura.fields import Field
from proxy.rules.context import SourceContext
from proxy.serve import RunningProxy

INTERVAL = 0.05

EVENT = f"GET {KAVA_TARGET} HTTP/1.1\r\nHost: portal.example.edu\r\n\r\n".encode()


def rules_text(application: str, *, extra: str = "") -> str:
    """A rules file with one rule, ``portal``, that names the application."""
    return (
        '[[rule]]\nname = "portal"\n'
        f'applicationName = [{{ value = "{application}" }}]\n{extra}'
    )


BROKEN = rules_text("Broken", extra="when.page = '('\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def send_event(running: RunningProxy, upstream: Any) -> dict[str, Any]:
    """Send one KAVA event; the parameters the stand-in Kaltura received."""
    response = await send_raw(running.ports[0], EVENT)
    assert 200 == response.status
    params: dict[str, Any] = upstream.standin.received[-1].params
    return params


def reloads(running: RunningProxy, result: str) -> int:
    return running.app.metrics.rules_reloads.value(result)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture(name="rules_dir")
def _rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    write(directory / "10-portal.toml", rules_text("Before"))
    return directory


async def test_an_edited_rules_file_is_picked_up_and_counted_as_success(
    upstream: Any, start_proxy: Any, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kstats.rules")
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    assert "Before" == (await send_event(running, upstream))["application"]

    write(rules_dir / "10-portal.toml", rules_text("After the edit"))
    await eventually(lambda: reloads(running, "success") == 1)

    assert "After the edit" == (await send_event(running, upstream))["application"]
    registry = running.app.metrics.registry
    digest = running.app.rules.digest
    assert 1 == registry.get_sample_value(
        "kstats_rules_reloads_total", {"result": "success"}
    )
    assert 1 == registry.get_sample_value("kstats_rules_info", {"hash": digest})
    (line,) = [r for r in caplog.records if r.name == "kstats.rules"]
    assert logging.INFO == line.levelno
    assert f"1 files, 1 rules, hash {digest}" in line.getMessage()


async def test_a_broken_edit_keeps_the_old_rules_is_logged_and_a_fix_is_picked_up(
    upstream: Any, start_proxy: Any, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kstats.rules")
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    digest = running.app.rules.digest

    write(rules_dir / "10-portal.toml", BROKEN)
    await eventually(lambda: reloads(running, "failure") == 1)

    assert "Before" == (await send_event(running, upstream))["application"]
    assert digest == running.app.rules.digest
    (warning,) = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "kstats.rules"
    ]
    assert "10-portal.toml: rule 'portal': when.page: invalid regex" in (
        warning.getMessage()
    )

    # the broken file is not loaded again until it changes
    assert not await running.watcher.check()
    assert 1 == reloads(running, "failure")

    write(rules_dir / "10-portal.toml", rules_text("Fixed again"))
    await eventually(lambda: reloads(running, "success") == 1)
    assert "Fixed again" == (await send_event(running, upstream))["application"]
    assert 1 == reloads(running, "failure")


async def test_a_changed_table_csv_is_picked_up(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    table = 'playbackContext = [{ value = "42", table = "courses" }]\n'
    table += '[table.courses]\nfile = "courses.csv"\n'
    write(rules_dir / "10-portal.toml", rules_text("Portal", extra=table))
    courses = write(rules_dir / "courses.csv", "42,86091\n")
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    assert str(courses) in running.app.rules.inputs
    assert "86091" == (await send_event(running, upstream))["playbackContext"]

    write(courses, "42,1234567\n")
    await eventually(lambda: reloads(running, "success") == 1)

    assert "1234567" == (await send_event(running, upstream))["playbackContext"]


def publish_configmap(volume: Path, stamp: str, files: dict[str, str]) -> None:
    """Publish ``files`` in ``volume`` as the kubelet updates a ConfigMap.

    The files go to a new ``..<stamp>`` directory; ``..data`` is then
    re-pointed to it in one rename, the visible names are symlinks through
    ``..data``, and the previous directory is removed.
    """
    directory = volume / f"..{stamp}"
    directory.mkdir()
    for name, text in files.items():
        write(directory / name, text)

    data = volume / "..data"
    previous = data.resolve() if data.is_symlink() else None
    temporary = volume / "..data_tmp"
    temporary.symlink_to(directory.name)
    os.replace(temporary, data)

    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(Path("..data") / name)
    if previous is not None:
        shutil.rmtree(previous)


async def test_a_configmap_symlink_swap_is_picked_up(
    upstream: Any, start_proxy: Any, tmp_path: Path
) -> None:
    volume = tmp_path / "configmap"
    volume.mkdir()
    publish_configmap(
        volume, "2026_12_03_10_00_00.1", {"rules.toml": rules_text("Old")}
    )
    running = await start_proxy(upstream.url, rules=volume, reload_interval=INTERVAL)
    assert "Old" == (await send_event(running, upstream))["application"]
    old = (volume / "rules.toml").stat()

    # same size, same modification time: only what the name resolves to moves
    publish_configmap(
        volume, "2026_12_03_10_05_00.2", {"rules.toml": rules_text("New")}
    )
    new_file = volume / "..2026_12_03_10_05_00.2" / "rules.toml"
    os.utime(new_file, ns=(old.st_atime_ns, old.st_mtime_ns))
    await eventually(lambda: reloads(running, "success") == 1)

    assert "New" == (await send_event(running, upstream))["application"]
    assert (str(volume / "rules.toml"),) == running.app.rules.files


async def test_a_file_added_to_the_directory_is_picked_up(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    assert "playbackContext" not in await send_event(running, upstream)

    courses = '[[rule]]\nname = "courses"\nplaybackContext = [{ value = "86091" }]\n'
    write(rules_dir / "20-courses.toml", courses)
    await eventually(lambda: len(running.app.rules.rules) == 2)

    params = await send_event(running, upstream)
    assert ("Before", "86091") == (params["application"], params["playbackContext"])


async def test_an_unchanged_tree_is_not_reloaded(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    rules = running.app.rules

    # an editor's swap file is hidden: not a change of the rules
    write(rules_dir / ".10-portal.toml.swp", "scratch")
    await asyncio.sleep(5 * INTERVAL)

    assert not await running.watcher.check()
    assert rules is running.app.rules
    assert (0, 0) == (reloads(running, "success"), reloads(running, "failure"))


async def test_a_reload_request_reloads_on_sighup_with_watching_off(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=0)
    write(rules_dir / "10-portal.toml", BROKEN)
    await asyncio.sleep(5 * INTERVAL)
    assert 0 == reloads(running, "failure")  # nobody looked

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, running.watcher.request_reload)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: reloads(running, "failure") == 1)

        # SIGHUP tries again whatever the files look like
        write(rules_dir / "10-portal.toml", rules_text("After SIGHUP"))
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: reloads(running, "success") == 1)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)

    assert "After SIGHUP" == (await send_event(running, upstream))["application"]


class GatedSource:
    """A network source that holds its request until the test lets it go."""

    kind = "gated"
    needs_network = True

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def extract(self, context: SourceContext) -> str | None:
        return None

    async def fetch(self, context: SourceContext) -> str | None:
        self.entered.set()
        await self.release.wait()
        return "alice"


async def test_a_request_in_flight_finishes_on_the_rules_it_started_with(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=0)
    # userId comes first and waits on the gate; applicationName after it
    gate = GatedSource()
    old = running.app.rules
    (rule,) = old.rules
    sources = MappingProxyType({**rule.sources, Field.USER_ID: (gate,)})
    running.app.replace_rules(replace(old, rules=(replace(rule, sources=sources),)))

    async with asyncio.TaskGroup() as group:
        sending = group.create_task(send_event(running, upstream))
        async with asyncio.timeout(5):
            await gate.entered.wait()
        write(rules_dir / "10-portal.toml", rules_text("After the swap"))
        assert await running.watcher.reload_now()
        gate.release.set()

    first = sending.result()
    assert ("alice", "Before") == (first["userId"], first["application"])
    second = await send_event(running, upstream)
    assert "After the swap" == second["application"]
    assert "userId" not in second


async def test_a_stopped_proxy_no_longer_reloads(
    upstream: Any, start_proxy: Any, rules_dir: Path
) -> None:
    running = await start_proxy(upstream.url, rules=rules_dir, reload_interval=INTERVAL)
    await running.stop(1.0)

    write(rules_dir / "10-portal.toml", rules_text("After the stop"))
    await asyncio.sleep(5 * INTERVAL)

    assert 0 == reloads(running, "success")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


def test_serve_reloads_on_sighup(rules_dir: Path) -> None:
    port, admin_port = _free_port(), _free_port()
    command = [
        *(sys.executable, "-m", "proxy.cli", "serve", "--rules", str(rules_dir)),
        *("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"),
        *("--upstream", "http://127.0.0.1:9", "--reload-interval", "0"),
    ]
    serve = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    success = 'kstats_rules_reloads_total{result="success"} 1.0'
    try:
        deadline = time.monotonic() + 20
        metrics = ""
        while time.monotonic() < deadline and "kstats_rules_info{" not in metrics:
            try:
                metrics = _metrics(admin_port)
            except OSError:
                time.sleep(0.05)

        write(rules_dir / "10-portal.toml", rules_text("After SIGHUP"))
        serve.send_signal(signal.SIGHUP)
        while time.monotonic() < deadline and success not in metrics:
            time.sleep(0.05)
            metrics = _metrics(admin_port)
        assert success in metrics

        serve.send_signal(signal.SIGTERM)
        assert 0 == serve.wait(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=10)

    assert serve.stderr is not None
    assert "rules reloaded from" in serve.stderr.read()
