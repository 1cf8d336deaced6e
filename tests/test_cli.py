"""The command line: check's report and exit code, and the offline demo."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest
from support import RULES

from proxy.cli import build_parser, main
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
