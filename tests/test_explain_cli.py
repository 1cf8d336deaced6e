"""``kstats-proxy explain``: one request through the rules, each field's story.

The requests are the fixtures' recorded ones; the rules the shipped
ones, with one more rule where a test needs a cookie source (the shipped
rules read the SSO gateway's headers, never a cookie).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import RULES, load_records

from proxy.cli import main
from proxy.explain import explain_request, render_explanation
from proxy.kaltura.fields import Field
from proxy.kaltura.session import KsReader
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleSet
from proxy.rules.sources import Source

LEGACY = {r.label: r for r in load_records("legacy-players.jsonl")}
PYTHON = {r.label: r for r in load_records("python-client.jsonl")}

# An mwEmbed v2 event from a KMS channel page: none of the three fields.
KMS_SHARE = LEGACY["mwembed-kms3-share-no-fields"]
KMS_URL = f"https://kms.example.edu{KMS_SHARE.raw_path}"

KMS_COOKIE_RULE = """
# KMS behind a portal that leaves the user in a cookie
[[rule]]
name = "kms-portal-cookie"
when.host = '^kms\\.example\\.edu$'
userId = [{ cookie = "portal_user", decode = "url" }]
"""


@pytest.fixture(name="cookie_rules")
def _cookie_rules(tmp_path: Path) -> Path:
    """The shipped rules, and a cookie rule after the MediaSpace one."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "15-kms-portal.toml").write_text(KMS_COOKIE_RULE)
    return rules


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def field_line(text: str, field: str) -> str:
    """The line of ``field`` in an event's table, its cells split on 2+ spaces."""
    line = next(line for line in text.splitlines() if line.startswith(f"  {field} "))
    return "|".join(re.split(r"\s{2,}", line.strip()))


# -- the text report -------------------------------------------------------------


def test_explain_of_an_mwembed_request_with_a_cookie_shows_the_user_added_by_its_rule(
    cookie_rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = explain(
        capsys,
        "--rules",
        str(cookie_rules),
        "--cookie",
        "portal_user=dana%40example.edu",
        KMS_URL,
    )

    assert 0 == status
    assert (
        "userId|-|-> dana@example.edu|(cookie, rule kms-portal-cookie)"
        == field_line(out, "userId")
    )
    # the shipped MediaSpace rule gives the other two
    assert "applicationName|-|-> MediaSpace|(value, rule mediaspace)" == field_line(
        out, "applicationName"
    )
    assert "playbackContext|-|-> 86091|(page, rule mediaspace)" == field_line(
        out, "playbackContext"
    )
    assert "  rules matched    mediaspace, kms-portal-cookie, other-pages\n" in out
    # written as mwEmbed v2 writes it: encoded twice
    assert "target           + event:userId=dana%2540example.edu\n" in out
    assert "body             unchanged\n" in out
    assert "are not called in a dry run" in out


def test_explain_json_agrees_with_the_text(
    cookie_rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--rules", str(cookie_rules), "--cookie", "portal_user=dana", KMS_URL]
    _, text, _ = explain(capsys, *args)
    status, out, _ = explain(capsys, "--json", *args)

    assert 0 == status
    document = json.loads(out)
    assert ("stats", "kms.example.edu", None) == (
        document["kind"],
        document["host"],
        document["passed_through"],
    )
    [event] = document["events"]
    for name, report in event["fields"].items():
        before = report["before"] or "-"
        after = report["after"] or "-"
        how = report["source"]
        if report["rule"]:
            how += f", rule {report['rule']}"
        assert f"{name}|{before}|-> {after}|({how})" == field_line(text, name)
    user = event["fields"]["userId"]
    assert ("dana", "added", "cookie", "kms-portal-cookie") == (
        user["after"],
        user["status"],
        user["source"],
        user["rule"],
    )
    assert document["target"]["before"] == KMS_SHARE.raw_path
    assert document["target"]["after"].startswith(KMS_SHARE.raw_path + "&")
    assert "event:userId=dana" in document["target"]["added"]
    assert [] == document["target"]["removed"]


def test_explain_takes_the_host_header_from_an_absolute_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, absolute, _ = explain(capsys, "--rules", str(RULES), "--json", KMS_URL)
    _, with_host, _ = explain(
        capsys,
        "--rules",
        str(RULES),
        "--json",
        "--header",
        "Host: kms.example.edu",
        KMS_SHARE.raw_path,
    )
    _, no_host, _ = explain(capsys, "--rules", str(RULES), "--json", KMS_SHARE.raw_path)

    assert json.loads(absolute) == json.loads(with_host)
    assert ["mediaspace", "other-pages"] == json.loads(absolute)["events"][0][
        "rules_matched"
    ]
    # without a Host, the host-bound MediaSpace rule does not match
    assert ["other-pages"] == json.loads(no_host)["events"][0]["rules_matched"]


def test_explain_posts_a_json_body_read_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = PYTHON["py-a2-collect-without-user-fields-no-ks"]
    body = tmp_path / "body.json"
    body.write_bytes(record.body)

    status, out, _ = explain(
        capsys,
        "--rules",
        str(RULES),
        "--header",
        "X-Forwarded-User: jdoe@example.edu",
        "--body",
        f"@{body}",
        f"http://127.0.0.1:8765{record.raw_path}",
    )

    assert 0 == status
    assert "request          POST /api_v3/service/stats/action/collect\n" in out
    assert "userId|-|-> jdoe@example.edu|(header, rule other-pages)" == field_line(
        out, "userId"
    )
    assert "target           unchanged\n" in out
    assert 'body             + event.userId="jdoe@example.edu"\n' in out


def test_explain_of_a_player_file_says_it_passes_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = explain(
        capsys, "--rules", str(RULES), "https://kms.example.edu/p/1234/embedIframeJs"
    )
    assert 0 == status
    assert "other: passed through unchanged (not under /api_v3/)" in out
    assert "\nevent" not in out


def test_explain_reads_a_ks_v2_user_with_the_admin_secret_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = PYTHON["py-b2-collect-with-user-fields-ks-v2"]
    args = ["--rules", str(RULES), "--body", record.body.decode()]
    url = f"http://127.0.0.1:8765{record.raw_path}"

    _, without_secret, _ = explain(capsys, *args, url)
    monkeypatch.setenv("KSTATS_ADMIN_SECRET", "1234:testsecret")
    _, with_secret, _ = explain(capsys, *args, url)

    # the event names alice either way; only a readable KS decides it
    assert field_line(without_secret, "userId").endswith("|(event)")
    assert field_line(with_secret, "userId").endswith("|(ks)")


# -- what is refused -------------------------------------------------------------


def test_explain_with_bad_rules_exits_1_with_the_errors_check_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "m"\nuserId = [{ header = "X", table = "t" }]\n')
    assert 1 == main(["check", str(bad)])
    check_errors = capsys.readouterr().err

    status, out, err = explain(capsys, "--rules", str(bad), KMS_URL)

    assert 1 == status
    assert "" == out
    assert check_errors == err
    assert err.startswith(f"{bad}: rule 'm': ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["kms.example.edu/api_v3/"], "expected an absolute http(s) URL or a path"),
        (["--body", "@/nonexistent/body.json", "/api_v3/"], "No such file"),
    ],
    ids=["url-without-scheme", "unreadable-body-file"],
)
def test_explain_refuses_bad_arguments_with_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = explain(capsys, "--rules", str(RULES), *args)
    assert 2 == status
    assert "" == out
    assert err.startswith("kstats-proxy explain: ")
    assert message in err


def test_explain_refuses_a_header_without_a_colon(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--header", "X-Remote-User=dana", KMS_URL])
    assert 2 == exit_.value.code
    assert "expected NAME:VALUE, got 'X-Remote-User=dana'" in capsys.readouterr().err


# -- network sources stay offline ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetworkOnlySource:
    """A source that only the network could answer; any use fails the test."""

    kind: str = "entry_category"
    needs_network: bool = True

    def extract(self, context: object) -> str | None:
        raise AssertionError("a network source was read in a dry run")

    async def fetch(self, context: object) -> str | None:
        raise AssertionError("a network source was called in a dry run")


def with_network_context(rules: RuleSet, rule_name: str) -> RuleSet:
    """``rules`` with ``rule_name``'s playbackContext given by the network only."""
    changed = []
    for rule in rules.rules:
        if rule.name == rule_name:
            sources: dict[Field, tuple[Source, ...]] = dict(rule.sources)
            sources[Field.PLAYBACK_CONTEXT] = (NetworkOnlySource(),)
            rule = dataclasses.replace(rule, sources=sources)
        changed.append(rule)
    return dataclasses.replace(rules, rules=tuple(changed))


def test_explain_shows_a_field_only_a_network_source_could_give_as_missing() -> None:
    rules = with_network_context(load_rules(RULES), "mediaspace")

    explanation = asyncio.run(
        explain_request(
            rules,
            KsReader(),
            method=KMS_SHARE.method,
            target=KMS_SHARE.raw_path,
            headers=KMS_SHARE.headers,
        )
    )

    [event] = explanation.events
    context = event.fields[2]
    assert (Field.PLAYBACK_CONTEXT, None, "none") == (
        context.field,
        context.after,
        context.source,
    )
    assert [("mediaspace", "entry_category")] == [
        (u.rule, u.kind) for u in context.uncalled
    ]
    assert not any("contextId" in part for part in explanation.target_change.added)
    line = field_line(render_explanation(explanation), "playbackContext")
    assert "(none; not called: entry_category of rule mediaspace)" in line


def test_explain_runs_as_the_console_command() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "explain",
            "--rules",
            str(RULES),
            "--header",
            "X-Remote-User: dana@example.edu",
            KMS_URL,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "-> dana@example.edu  (header, rule mediaspace)" in done.stdout
    assert done.stdout.startswith(f"kstats-proxy explain: 6 rules from {RULES} ")
