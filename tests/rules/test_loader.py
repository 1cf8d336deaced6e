"""Loading rules files: what is accepted, and how each mistake is reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import RULES

from proxy.kaltura.fields import Field
from proxy.rules.loader import RulesError, load_rules
from proxy.rules.model import Policy


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RulesError) as raised:
        load_rules(path)
    return raised.value.problems


def test_shipped_rules_load_with_one_rule_per_integration() -> None:
    rules = load_rules(RULES)
    names = [rule.name for rule in rules.rules]
    assert ["mediaspace", "sharepoint", "blackboard", "moodle", "sakai"] == names[:5]
    assert "other-pages" == names[-1]
    assert 1234 == rules.kaltura.partner_id
    assert "86201" == rules.tables["blackboard-courses"]["_123_1"]


def test_files_of_a_directory_are_read_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-b.toml", '[[rule]]\nname = "b"\n')
    write(tmp_path, "10-a.toml", '[[rule]]\nname = "a"\n')
    write(tmp_path, "notes.txt", "not a rules file")
    assert ["a", "b"] == [rule.name for rule in load_rules(tmp_path).rules]


def test_a_full_rule_is_compiled_into_conditions_sources_and_policies(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "r.toml",
        """
[[rule]]
name = "moodle"
when.page = '^https://moodle\\.example\\.edu/'
when.host = 'moodle'
when.path = "/api_v3/"
when.partner = [1234, 5678]
when.header = { "X-App" = "^moodle$" }
userId = [{ header = "X-Remote-User" }, { cookie = "c", decode = "ks" }]
applicationName = [{ value = "Moodle" }]
playbackContext = [{ page = 'id=(\\d+)', table = "courses" }]
policy.userId = "override"

[table.courses]
entries = { "42" = 86091, "43" = "86092" }
""",
    )
    rule = load_rules(path).rules[0]
    assert ["header", "cookie"] == [s.kind for s in rule.sources[Field.USER_ID]]
    assert Policy.OVERRIDE is rule.policy(Field.USER_ID)
    assert Policy.FILL is rule.policy(Field.APPLICATION_NAME)
    assert frozenset({"1234", "5678"}) == rule.when.partners
    assert "/api_v3/" == rule.when.path


def test_table_files_are_read_relative_to_the_rules_file(tmp_path: Path) -> None:
    write(tmp_path, "courses.csv", "# course,category\n42,86091\n\n43, 86092\n")
    path = write(tmp_path, "r.toml", '[table.courses]\nfile = "courses.csv"\n')
    assert {"42": "86091", "43": "86092"} == dict(load_rules(path).tables["courses"])


LOOKUP = (
    '[lookup.who]\nurl = "https://moodle.example.edu/local/whoami/"\n'
    'forward_cookies = ["S"]\nfield = "username"\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[rule]]\nname = \"m\"\nwhen.page = '('\n",
            "r.toml: rule 'm': when.page: invalid regex '(' (missing ), unterminated",
        ),
        (
            '[[rule]]\nname = "m"\nwhen.colour = "red"\n',
            "r.toml: rule 'm': when: unknown key 'colour'",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ cookie = 5 }]\n',
            "r.toml: rule 'm': userId[1].cookie: expected a non-empty string, got 5",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ header = "X", decode = "rot13" }]\n',
            "r.toml: rule 'm': userId[1].decode: expected one of url, base64, ks, jwt, "
            "got 'rot13'",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ value = "x", table = "nope" }]\n',
            "r.toml: rule 'm': userId[1].table: no table named 'nope'",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ header = "X", cookie = "Y" }]\n',
            "r.toml: rule 'm': userId[1]: expected exactly one of value, page, header,"
            " cookie, query, ks, got ['header', 'cookie']",
        ),
        (
            '[[rule]]\nname = "m"\npolicy.userId = "sometimes"\n',
            "r.toml: rule 'm': policy.userId: expected 'fill' or 'override', "
            "got 'sometimes'",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ ks = "cookie" }]\n',
            "r.toml: rule 'm': userId[1].ks: expected 'request', got 'cookie'",
        ),
        (
            '[[rule]]\nname = "m"\nplaybackContext = [{ page = "x", pattern = "y" }]\n',
            "r.toml: rule 'm': playbackContext[1].pattern: a page source is a regex",
        ),
        (
            '[[rule]]\nname = "has space"\n',
            "r.toml: rule #1: name: expected 1-64 letters, digits, '_', '.' or '-', "
            "got 'has space'",
        ),
        (
            '[[rule]]\nname = "m"\n[[rule]]\nname = "m"\n',
            "r.toml: rule #2: name: rule 'm' is defined twice",
        ),
        (
            "[kaltura]\npartner_id = -3\n",
            "r.toml: [kaltura]: partner_id: expected a positive integer, got -3",
        ),
        (
            '[kaltura]\nservice_url = "ftp://x"\n',
            "r.toml: [kaltura]: service_url: expected an http(s) URL, got 'ftp://x'",
        ),
        (
            "colour = 1\n",
            "r.toml: unknown top-level key 'colour'",
        ),
        (
            "not toml = = 1\n",
            "r.toml: invalid TOML",
        ),
        (
            '[table.t]\nentries = { "a" = true }\n',
            "r.toml: table 't': entry 'a': expected a string or integer, got True",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ cookie = "S", lookup = "who" }]\n',
            "r.toml: rule 'm': userId[1].lookup: no lookup named 'who'",
        ),
        (
            '[[rule]]\nname = "m"\nuserId = [{ page = "x", lookup = "who" }]\n'
            + LOOKUP,
            "r.toml: rule 'm': userId[1].lookup: a lookup is made for a cookie or a "
            "header, not a 'page' source",
        ),
        (
            '[[rule]]\nname = "m"\n'
            'userId = [{ cookie = "S", lookup = "who", pattern = "x" }]\n' + LOOKUP,
            "r.toml: rule 'm': userId[1].pattern: a lookup's answer is refined in its "
            "[lookup] section",
        ),
        (
            '[lookup.who]\nurl = "moodle/whoami"\nforward_cookies = ["S"]\n'
            'field = "username"\n',
            "r.toml: lookup 'who': url: expected an http(s) URL, got 'moodle/whoami'",
        ),
        (
            '[lookup.who]\nurl = "https://m/w"\nforward_cookies = "S"\n'
            'field = "username"\n',
            "r.toml: lookup 'who': forward_cookies: expected a list of cookie names",
        ),
        (
            '[lookup.who]\nurl = "https://m/w"\nforward_cookies = ["S"]\n'
            'field = "d..x"\n',
            "r.toml: lookup 'who': field: expected a key of the JSON answer",
        ),
        (
            LOOKUP + 'ttl = "10 minutes"\n',
            "r.toml: lookup 'who': ttl: expected a duration such as '300ms', '30s', "
            "'10m' or '1h', got '10 minutes'",
        ),
        (
            LOOKUP + 'timeout = "0s"\n',
            "r.toml: lookup 'who': timeout: expected a duration above 0",
        ),
        (
            LOOKUP + "retries = 3\n",
            "r.toml: lookup 'who': unknown key 'retries'",
        ),
        (
            '[[rule]]\nname = "m"\nplaybackContext = [{ category = "A>{1}" }]\n',
            "r.toml: rule 'm': playbackContext[1]: expected exactly one of value, "
            "page, header, cookie, query, ks, got none",
        ),
        (
            '[[rule]]\nname = "m"\n'
            'playbackContext = [{ page = "id=(\\\\d+)", category = 7 }]\n',
            "r.toml: rule 'm': playbackContext[1].category: expected a non-empty "
            "string, got 7",
        ),
        (
            '[[rule]]\nname = "m"\nplaybackContext = [{ entry_category = "" }]\n',
            "r.toml: rule 'm': playbackContext[1].entry_category: expected a "
            "non-empty string, got ''",
        ),
        (
            '[[rule]]\nname = "m"\n'
            'playbackContext = [{ entry_category = "A>", page = "x" }]\n',
            "r.toml: rule 'm': playbackContext[1]: unknown key 'page'",
        ),
    ],
)
def test_each_mistake_is_reported_with_file_rule_key_and_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, "r.toml", text)
    problems = problems_of(path)
    assert any(expected in problem for problem in problems), problems
    assert all(problem.startswith(str(path)) for problem in problems)


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[[rule]]\nname = \"a\"\nwhen.page = '('\n")
    write(tmp_path, "b.toml", '[[rule]]\nname = "b"\nuserId = "not a list"\n')
    problems = problems_of(tmp_path)
    assert 2 == len(problems)
    assert "a.toml" in problems[0] and "b.toml" in problems[1]


def test_kaltura_section_may_be_given_once_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[kaltura]\npartner_id = 1\n")
    write(tmp_path, "b.toml", "[kaltura]\npartner_id = 2\n")
    (problem,) = problems_of(tmp_path)
    assert "b.toml: [kaltura]: already given in" in problem


def test_a_missing_path_and_an_empty_directory_are_errors(tmp_path: Path) -> None:
    assert ["no such file or directory"] == [
        p.split(": ", 1)[1] for p in problems_of(tmp_path / "absent")
    ]
    assert "no *.toml rules files" in problems_of(tmp_path)[0]


def test_the_digest_changes_with_the_files_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", '[[rule]]\nname = "a"\n')
    first = load_rules(path).digest
    write(tmp_path, "r.toml", '[[rule]]\nname = "b"\n')
    assert first != load_rules(path).digest
    assert 12 == len(first)
