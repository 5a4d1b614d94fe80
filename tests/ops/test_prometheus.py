"""Prometheus: scrape configs, alert and SLO rules, their unit tests and runbooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.ops._deploy_check import dc

# The alert families operations relies on; each must exist.
REQUIRED_ALERTS = {
    "LodestarServiceDown",
    "LodestarHighErrorRate",
    "LodestarGatewayHighErrorRate",
    "LodestarLatencySLOBurnFast",
    "LodestarLatencySLOBurnSlow",
    "LodestarAvailabilitySLOBurnFast",
    "LodestarInferenceQueueSaturated",
    "LodestarCircuitBreakerOpen",
    "LodestarBackendUnavailable",
    "LodestarVolumeFillingUp",
}


def test_promtool_accepts_both_scrape_configs() -> None:
    assert dc.check_scrape_configs() == []


def test_promtool_accepts_the_rules() -> None:
    assert dc.check_rules() == []


def test_rule_unit_tests_pass() -> None:
    assert dc.rule_test_files(), "no rule unit tests"
    assert dc.test_rules() == []


def test_every_alert_is_unit_tested() -> None:
    tested = set()
    for path in dc.rule_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    alerts = {rule["alert"] for _, rule in dc.load_rules() if "alert" in rule}
    assert alerts >= REQUIRED_ALERTS
    assert alerts - tested == set()


def test_every_alert_links_to_its_runbook_section() -> None:
    assert dc.check_runbooks() == []


def test_runbook_check_catches_a_missing_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runbook = tmp_path / "operations.md"
    runbook.write_text("# Operating\n\n### LodestarServiceDown\n")
    monkeypatch.setattr(dc, "RUNBOOK", runbook)
    problems = dc.check_runbooks()
    assert not any("LodestarServiceDown:" in p for p in problems)
    assert any("LodestarHighErrorRate: no section" in p for p in problems)


def test_github_anchors() -> None:
    assert dc.github_anchor("LodestarSLOBurn") == "lodestarsloburn"
    assert dc.github_anchor("Back up and restore collections") == "back-up-and-restore-collections"
    assert dc.github_anchor("Deploy `prod` (3 nodes)") == "deploy-prod-3-nodes"


def test_rule_test_failures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = yaml.safe_load((dc.PROMETHEUS / "tests" / "alerts_test.yaml").read_text())
    tests["rule_files"] = [str(p) for p in dc.rule_files()]
    first = tests["tests"][0]["alert_rule_test"][-1]
    first["exp_alerts"][0]["exp_labels"]["severity"] = "info"
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(tests))
    monkeypatch.setattr(dc, "rule_test_files", lambda: [broken])
    problems = dc.test_rules()
    assert problems
    assert "FAILED" in problems[0]
