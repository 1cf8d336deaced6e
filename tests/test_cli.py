"""The command line: check's report and exit code, and the offline demo."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from support import RULES

from proxy.cli import _serve_config, build_parser, main
from proxy.demo import run_demo, shipped_rules


def test_check_accepts_the_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == main(["check", str(RULES)])
    assert f"{RULES}: ok, 6 rules, hash " in capsys.readouterr().out


def test_check_prints_one_line_per_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[rule]]\nname = "m"\nwhen.page = "("\nuserId = [{ cookie = 5 }]\n',
        encoding="utf-8",
    )
    assert 1 == main(["check", str(bad)])
    lines = capsys.readouterr().err.splitlines()
    assert 2 == len(lines)
    assert all(line.startswith(f"{bad}: rule 'm': ") for line in lines)


def test_flags_fall_back_to_kstats_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KSTATS_UPSTREAM", "http://127.0.0.1:9")
    monkeypatch.setenv("KSTATS_LISTEN", "127.0.0.1:8888")
    args = build_parser().parse_args(["serve", "--listen", "127.0.0.1:7777"])
    assert "http://127.0.0.1:9" == args.upstream
    assert "127.0.0.1:7777" == args.listen  # the flag wins


def test_reload_interval_comes_from_the_flag_or_environment_and_is_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KSTATS_RELOAD_INTERVAL", "0")
    assert 0.0 == _serve_config(build_parser().parse_args(["serve"])).reload_interval
    args = build_parser().parse_args(["serve", "--reload-interval", "0.5"])
    assert 0.5 == _serve_config(args).reload_interval

    assert 2 == main(["serve", "--reload-interval", "-1"])
    assert "--reload-interval: expected seconds >= 0, got '-1'" in (
        capsys.readouterr().err
    )


def test_serve_refuses_a_bad_upstream_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert 2 == main(["serve", "--upstream", "ftp://kaltura.example"])
    assert "ftp://kaltura.example" in capsys.readouterr().err


def test_the_packaged_rules_are_the_repositorys_rules() -> None:
    packaged = sorted(p.name for p in shipped_rules().iterdir())
    assert sorted(p.name for p in RULES.iterdir()) == packaged


def test_demo_shows_every_integration_gaining_its_missing_fields() -> None:
    out = io.StringIO()
    assert 0 == asyncio.run(run_demo(out))
    text = out.getvalue()
    for integration, gained in [
        ("MediaSpace 3", "-> dana@example.edu"),
        ("SharePoint Extension v2", "-> 86101"),
        ("Blackboard Building Block v2", "-> Blackboard"),
        ("Moodle Video Package v1", "-> frank"),
        ("Sakai Video Tool CLE v2", "-> 86301"),
        ("a non-Kaltura page", "-> www.example.org"),
    ]:
        section = text.split(integration, 1)[1].split("\n\n", 1)[0]
        assert gained in section, section
        assert "player got       200" in section


def test_demo_runs_as_the_console_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "Kaltura got      ...&event:userId=dana%2540example.edu" in done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_runs_reads_environment_logs_json_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    upstream_port, port, admin_port = _free_port(), _free_port(), _free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-c", STANDIN_SCRIPT, str(upstream_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    env = {
        **os.environ,
        "KSTATS_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
        "KSTATS_RULES": str(RULES),
        "KSTATS_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "KSTATS_ADMIN_SECRET": "1234:testsecret",
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None and "ready" in upstream.stdout.readline()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        assert (200, "ok\n") == _get(f"http://127.0.0.1:{admin_port}/healthz")

        event = (
            f"http://127.0.0.1:{port}/api_v3/index.php?service=stats&action=collect"
            "&format=1&event:eventType=3&event:partnerId=1234"
            "&event:referrer=https%3A%2F%2Fwww.example.org%2Fsecret-page"
        )
        request = urllib.request.Request(event, headers={"X-Forwarded-User": "zoe"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b"true" == response.read()
        metrics = _get(f"http://127.0.0.1:{admin_port}/metrics")[1]
        assert 'kstats_enrichments_total{field="userId",source="header"} 1.0' in metrics

        serve.send_signal(signal.SIGTERM)
        assert 0 == serve.wait(timeout=30)
    finally:
        for process in (serve, upstream):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert serve.stderr is not None
    lines = [orjson.loads(line) for line in serve.stderr.read().splitlines()]
    access = [line for line in lines if line["logger"] == "kstats.access"]
    assert ["userId:header", "applicationName:page"] == access[0]["added"]
    # the user id, the secret and the page never reach the log
    text = str(lines)
    assert "zoe" not in text and "testsecret" not in text
    assert "secret-page" not in text


STANDIN_SCRIPT = """
import asyncio, sys
from aiohttp import web
from proxy.standin import StandIn, make_standin_app

async def main(port):
    runner = web.AppRunner(make_standin_app(StandIn()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.sleep(120)

asyncio.run(main(int(sys.argv[1])))
"""


def test_admin_secrets_come_from_the_environment_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text("# partner secrets\n5678:othersecret\n", encoding="utf-8")
    monkeypatch.setenv("KSTATS_ADMIN_SECRET", "1234:testsecret")
    args = build_parser().parse_args(
        ["serve", "--admin-secret-file", str(secrets), "--upstream", "http://a.b"]
    )
    config = _serve_config(args)
    assert ("testsecret",) == config.admin_secrets.for_partner(1234)
    assert ("othersecret",) == config.admin_secrets.for_partner(5678)
    assert "testsecret" not in repr(config)


async def test_demo_serve_keeps_the_proxy_up_and_sends_the_traffic_again() -> None:
    from proxy.demo import run_demo

    out = io.StringIO()
    loopback = ("127.0.0.1", 0)
    code = await run_demo(out, serve=(loopback, loopback), rounds=2, every=0.05)

    text = out.getvalue()
    assert 0 == code
    assert "serving: the proxy on 127.0.0.1:" in text
    assert "after 2 more rounds: /status answered 200" in text
    assert "the proxy answered" not in text  # every resent event got 200
