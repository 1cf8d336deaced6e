"""The shipped alerting rules and dashboard, checked by Prometheus's own tools.

``promtool check rules`` parses the rules file; ``promtool test rules``
runs the unit tests next to it, which feed each alert synthetic series and
say when it must fire and when not. The dashboard's expressions are run
against a live Prometheus in ``tests/test_prometheus.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from support import REPO

RULES = REPO / "deploy" / "prometheus" / "kstats-proxy-rules.yaml"
RULE_TESTS = RULES.with_name("kstats-proxy-rules.test.yaml")
DASHBOARD = REPO / "deploy" / "grafana" / "kstats-proxy-dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does)")
    return found


def test_promtool_accepts_the_shipped_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])}
    assert alerts == tested


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def test_the_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Coverage per field",
        "Events per second, by API and type",
        "Upstream latency (events)",
        "Failures per second",
        "Spool depth",
        "Rules reloads",
    } <= titles
    # every query names only kstats metrics, and asks the chosen datasource
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all("kstats_" in target["expr"] for target in panel["targets"])
    assert len(dashboard_expressions()) >= 10
