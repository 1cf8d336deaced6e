"""``kstats-proxy replay``: recorded traffic through the rules, counted, nothing sent.

The expected counts are worked out here from the fixture records
themselves (which fields each event carries, read with ``urllib``) and a
hand-checked table of what the shipped rules add to each record, not by
the code under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from support import FIXTURES, RULES, Record, load_records

from proxy.cli import main
from proxy.kaltura.fields import Field
from proxy.records import read_records
from proxy.replay import render_coverage, replay_records
from proxy.rules.loader import load_rules

LEGACY_FILE = FIXTURES / "legacy-players.jsonl"
LEGACY = load_records("legacy-players.jsonl")

# The wire name of each field in a stats.collect query.
WIRE = {
    "userId": "event:userId",
    "applicationName": "event:applicationId",
    "playbackContext": "event:contextId",
}

# What the shipped rules add to each legacy record as recorded (no SSO
# gateway header, so no user is ever added): field -> (rule, source).
ADDED_BY_SHIPPED_RULES: dict[str, dict[str, tuple[str, str]]] = {
    # a media page holds no category id
    "mwembed-kms3-play-no-fields": {"applicationName": ("mediaspace", "value")},
    "mwembed-kms3-share-no-fields": {
        "applicationName": ("mediaspace", "value"),
        "playbackContext": ("mediaspace", "page"),
    },
    # Moodle v1 has no categories
    "mwembed-moodle-v1-widget-loaded": {"applicationName": ("moodle", "value")},
    # the iframe's Referer carries no course_id
    "mwembed-blackboard-v2-play-user-only": {
        "applicationName": ("blackboard", "value")
    },
    "mwembed-sakai-v2-quartile-user-only": {
        "applicationName": ("sakai", "value"),
        "playbackContext": ("sakai", "page"),
    },
    "mwembed-moodle-v2-all-fields": {},
    "kdp3-sharepoint-v2-play-widget-ks": {
        "applicationName": ("sharepoint", "value"),
        "playbackContext": ("sharepoint", "page"),
    },
    "kdp3-sharepoint-v2-media-loaded-widget-ks": {
        "applicationName": ("sharepoint", "value"),
        "playbackContext": ("sharepoint", "page"),
    },
}

# The shipped rule each request's Host matches; "other-pages" matches all.
RULE_OF_HOST = {
    "kms.example.edu": "mediaspace",
    "sp.example.edu": "sharepoint",
    "blackboard.example.edu": "blackboard",
    "moodle.example.edu": "moodle",
    "sakai.example.edu": "sakai",
}
SHIPPED_RULE_ORDER = [
    "mediaspace",
    "sharepoint",
    "blackboard",
    "moodle",
    "sakai",
    "other-pages",
]


def carried_fields(record: Record) -> set[str]:
    """The report fields a legacy record's query carries, non-empty."""
    query = parse_qs(urlsplit(record.raw_path).query)
    return {name for name, wire in WIRE.items() if query.get(wire, [""])[0]}


@dataclass
class FieldCounts:
    present: int
    added: int
    missing: int
    added_from: Counter[str]


def expected_field_counts() -> dict[str, FieldCounts]:
    counts = {name: FieldCounts(0, 0, 0, Counter()) for name in WIRE}
    for record in LEGACY:
        carried = carried_fields(record)
        added = ADDED_BY_SHIPPED_RULES[record.label]
        for name, field_counts in counts.items():
            if name in carried:
                field_counts.present += 1
            elif name in added:
                field_counts.added += 1
                field_counts.added_from[added[name][1]] += 1
            else:
                field_counts.missing += 1
    return counts


def expected_rule_counts() -> dict[str, tuple[int, Counter[str]]]:
    """rule -> (events matched, values added per field)."""
    counts: dict[str, tuple[int, Counter[str]]] = {}
    for rule in SHIPPED_RULE_ORDER:
        hosts = [r for r in LEGACY if RULE_OF_HOST.get(r.header("Host") or "") == rule]
        matched = len(LEGACY) if rule == "other-pages" else len(hosts)
        written: Counter[str] = Counter()
        for record in LEGACY:
            for name, (by_rule, _) in ADDED_BY_SHIPPED_RULES[record.label].items():
                written[name] += by_rule == rule
        counts[rule] = (matched, +written)
    return counts


def table(text: str, header: str) -> list[list[str]]:
    """The rows under the line starting with ``header``, cells split on 2+ spaces."""
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line or line.startswith(" "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def by_kind(counts: Counter[str]) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{kind} {n}" for kind, n in ordered) or "-"


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["replay", "--rules", str(RULES), *args])
    out, err = capsys.readouterr()
    return status, out, err


# -- the coverage tables ---------------------------------------------------------


def test_hand_checked_expectations_cover_every_legacy_record() -> None:
    assert set(ADDED_BY_SHIPPED_RULES) == {r.label for r in LEGACY}
    assert 8 == len(LEGACY)


def test_replay_of_legacy_players_counts_each_field_as_worked_out_by_hand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = replay(capsys, str(LEGACY_FILE))

    assert 0 == status
    expected = expected_field_counts()
    rows = table(out, "field ")
    assert [row[0] for row in rows] == list(WIRE)
    for name, present, added, missing, added_from in rows:
        counts = expected[name]
        assert (int(present), int(added), int(missing)) == (
            counts.present,
            counts.added,
            counts.missing,
        ), name
        assert added_from == by_kind(counts.added_from), name
    # the figures the README quotes, as a second check of the arithmetic
    assert ["userId", "3", "0", "5", "-"] == rows[0]
    assert f"kstats-proxy replay: 8 requests from {LEGACY_FILE}" in out
    assert "requests with events: 8 (8 events); passed through: 0" in out


def test_replay_of_legacy_players_counts_each_rule_as_worked_out_by_hand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = replay(capsys, str(LEGACY_FILE))

    assert 0 == status
    expected = expected_rule_counts()
    rows = table(out, "rule ")
    assert [row[0] for row in rows] == SHIPPED_RULE_ORDER
    for name, matched, added, values in rows:
        expected_matched, written = expected[name]
        assert int(matched) == expected_matched, name
        assert int(added) == sum(written.values()), name
        assert values == by_kind(written), name


def test_replay_footer_says_network_sources_are_not_called(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = replay(capsys, str(LEGACY_FILE))
    assert "Network sources (lookup, category,\nentry_category) are not called" in out


# -- --diff and --json -----------------------------------------------------------


def diff_block(text: str, seq: int) -> str:
    """The ``--diff`` lines of record ``seq``: its heading to the next one."""
    match = re.search(rf"^#{seq} .*?(?=^#\d+ |^$)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, text
    return match.group(0)


def test_replay_diff_shows_the_kms_channel_page_gaining_its_category(
    capsys: pytest.CaptureFixture[str],
) -> None:
    share = next(r for r in LEGACY if r.label == "mwembed-kms3-share-no-fields")

    status, out, _ = replay(capsys, "--diff", str(LEGACY_FILE))

    assert 0 == status
    block = diff_block(out, share.seq)
    assert block.startswith(f"#{share.seq} {share.label}  stats, 1 event\n")
    row = re.compile(r"playbackContext +- +-> 86091 +\(page, rule mediaspace\)")
    assert row.search(block), block
    assert "+ event:contextId=86091" in block
    assert "+ event:applicationId=MediaSpace" in block
    # userId is neither changed nor awaiting a network source: not shown
    assert "userId" not in block


def test_replay_diff_marks_a_record_the_rules_leave_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    full = next(r for r in LEGACY if r.label == "mwembed-moodle-v2-all-fields")
    _, out, _ = replay(capsys, "--diff", str(LEGACY_FILE))
    assert f"#{full.seq} {full.label}  stats, 1 event: no change\n" in out


def test_replay_json_parses_and_agrees_with_the_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, text, _ = replay(capsys, str(LEGACY_FILE))
    status, out, _ = replay(capsys, "--json", "--diff", str(LEGACY_FILE))

    assert 0 == status
    document = json.loads(out)
    assert (8, 8, 8) == (
        document["requests"],
        document["event_requests"],
        document["events"],
    )
    field_rows, rule_rows = table(text, "field "), table(text, "rule ")
    assert (3, 6) == (len(field_rows), len(rule_rows))
    for name, present, added, missing, added_from in field_rows:
        counts = document["fields"][name]
        assert (int(present), int(added), int(missing)) == (
            counts["present"],
            counts["added"],
            counts["missing"],
        )
        assert added_from == by_kind(Counter(counts["added_from"]))
    for (name, matched, added, _), rule in zip(
        rule_rows, document["rules"], strict=True
    ):
        assert (name, int(matched), int(added)) == (
            rule["name"],
            rule["matched"],
            rule["added"],
        )

    share = next(c for c in document["changes"] if c["seq"] == 2)
    context = share["events"][0]["fields"]["playbackContext"]
    assert (None, "86091", "added", "page", "mediaspace") == (
        context["before"],
        context["after"],
        context["status"],
        context["source"],
        context["rule"],
    )
    assert "event:contextId=86091" in share["target"]["added"]
    assert document["network_sources_called"] is False


# -- what is counted apart, and what is refused ------------------------------------


def test_replay_counts_pass_through_requests_apart_from_the_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    player_file = {
        "seq": 9,
        "label": "player-file",
        "method": "GET",
        "raw_path": "/p/1234/sp/123400/embedIframeJs/uiconf_id/23448200",
        "headers": [["Host", "kms.example.edu"]],
    }
    other_call = {
        "seq": 10,
        "label": "entry-get",
        "method": "GET",
        "raw_path": "/api_v3/index.php?service=baseEntry&action=get&entryId=0_x",
        "headers": [["Host", "kms.example.edu"]],
    }
    records = tmp_path / "mixed.jsonl"
    lines = LEGACY_FILE.read_text().splitlines()
    lines += [json.dumps(player_file), json.dumps(other_call)]
    records.write_text("\n".join(lines) + "\n")

    status, out, _ = replay(capsys, "--json", str(records))

    assert 0 == status
    document = json.loads(out)
    assert (10, 8, 8) == (
        document["requests"],
        document["event_requests"],
        document["events"],
    )
    assert {
        "total": 2,
        "reasons": {"not under /api_v3/": 1, "API call other than statistics": 1},
    } == document["passed_through"]
    userid = document["fields"]["userId"]
    assert 8 == userid["present"] + userid["added"] + userid["missing"]


@pytest.mark.parametrize(
    ("second_line", "cause"),
    [
        ("{not json", "not a request record"),
        ('{"method": "GET"}', "no 'raw_path' key"),
        ('{"method": "GET", "raw_path": "/", "body_b64": "%%"}', "not base64"),
    ],
    ids=["not-json", "no-raw-path", "bad-base64"],
)
def test_replay_of_a_bad_record_exits_2_naming_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second_line: str, cause: str
) -> None:
    records = tmp_path / "bad.jsonl"
    first = LEGACY_FILE.read_text().splitlines()[0]
    records.write_text(f"{first}\n{second_line}\n")

    status, out, err = replay(capsys, str(records))

    assert 2 == status
    assert "" == out
    assert err.startswith(f"kstats-proxy replay: {records}:2: ")
    assert cause in err


def test_replay_of_bytes_that_are_not_utf8_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "latin1.jsonl"
    records.write_bytes(b'\n{"method": "GET", "raw_path": "/caf\xe9"}\n')

    status, _, err = replay(capsys, str(records))

    assert 2 == status
    assert f"{records}:2: not UTF-8 text" in err


def test_replay_of_a_missing_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.jsonl"
    status, _, err = replay(capsys, str(missing))
    assert 2 == status
    assert f"{missing}: No such file or directory" in err


def test_replay_with_bad_rules_exits_1_with_the_errors_check_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "m"\nwhen.page = "("\nuserId = [{ cookie = 5 }]\n')
    assert 1 == main(["check", str(bad)])
    check_errors = capsys.readouterr().err

    status = main(["replay", "--rules", str(bad), str(LEGACY_FILE)])

    out, err = capsys.readouterr()
    assert 1 == status
    assert "" == out
    assert check_errors == err
    assert 2 == len(err.splitlines())


# -- network sources stay offline ------------------------------------------------

# Moodle v1's user from the legacy application, and its category from the
# entry's: both need the network.
NETWORK_RULES = """
[kaltura]
partner_id = 1234
service_url = "{url}"

[lookup.moodle-whoami]
url = "{url}/local/whoami.php"
forward_cookies = ["MoodleSession"]
field = "username"

[[rule]]
name = "moodle"
when.host = '^moodle\\.example\\.edu$'
userId = [{{ cookie = "MoodleSession", lookup = "moodle-whoami" }}]
applicationName = [{{ value = "Moodle" }}]
playbackContext = [{{ entry_category = "Moodle>site>" }}]
"""


@pytest.fixture(name="listener")
async def _listener() -> AsyncIterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 that notes every request and answers like both."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({"username": "frank", "objects": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_replay_calls_no_network_source_and_counts_their_fields_as_missing(
    tmp_path: Path, listener: tuple[str, list[str]]
) -> None:
    url, seen = listener
    rules_file = tmp_path / "moodle.toml"
    rules_file.write_text(NETWORK_RULES.format(url=url))
    # of the two Moodle records, v1's event lacks a user and a category
    moodle = [r for r in LEGACY if r.header("Host") == "moodle.example.edu"]
    lacking = [r for r in moodle if not carried_fields(r)]
    assert (2, 1) == (len(moodle), len(lacking))

    report = await replay_records(
        load_rules(rules_file),
        read_records(LEGACY_FILE),
        records_path=str(LEGACY_FILE),
        rules_path=str(rules_file),
    )

    assert [] == seen
    for name in (Field.USER_ID, Field.PLAYBACK_CONTEXT):
        coverage = report.fields[name]
        assert (0, 1) == (sum(coverage.added.values()), coverage.missing_network)
    assert 2 == report.rules["moodle"].uncalled
    text = render_coverage(report)
    assert "  userId: 1 missing where a network source was not called" in text
    assert "  moodle: 2 network sources reached, not called" in text
    # the listener does note a request that reaches it
    async with aiohttp.ClientSession() as session, session.get(url + "/x"):
        pass
    assert ["/x"] == seen


def test_replay_runs_as_the_console_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "replay", str(LEGACY_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=RULES.parent,  # --rules defaults to rules/
    )
    assert 0 == done.returncode, done.stderr
    assert "requests with events: 8 (8 events)" in done.stdout
    assert re.search(r"\napplicationName +1 +7 +0 +value 7\n", done.stdout)


def test_replay_reports_what_the_legacy_pipeline_would_credit_before_and_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from proxy.cli import main

    records = str(FIXTURES / "python-client.jsonl")
    assert 0 == main(
        ["replay", "--rules", str(RULES), "--normalize", "get", "--json", records]
    )
    document = json.loads(capsys.readouterr().out)["legacy_pipeline"]

    # the Python client POSTs every event: none reaches the pipeline as sent
    assert document["before"]["events"] == document["before"]["unseen"] == 9
    # normalised, each is a GET the pipeline reads
    assert 0 == document["after"]["unseen"]
    assert document["after"]["viewer"] >= 1
    assert document["normalize_get"] is True
