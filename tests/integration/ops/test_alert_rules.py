"""Every alert rule is unit-tested by the real `promtool test rules`: it fires on a synthetic bad
series and stays quiet on a healthy one, with the thresholds, window and pending time of the
config. The same test file is what `flashfit render` writes beside the rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from flashfit_ops.config import resolve
from flashfit_ops.monitoring.rule_tests import rule_tests
from flashfit_ops.render import render_all, write_tree
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

# How promtool names a failed firing check (it names the group only for alert_rule_test).
FIRES = 'expr: "ALERTS{{alertname=\\"{}\\",alertstate=\\"firing\\"}}"'
CUSTOM = {"error_rate": 0.2, "p95_seconds": 0.25, "inference_seconds": 2.0, "window": "30s", "pending": "10s"}


def rendered(tmp_path: Path, alerts: dict) -> Path:
    config = resolve({"monitoring": {"alerts": alerts}}, environ={}, base_dir=tmp_path)
    out = tmp_path / "out"
    write_tree(render_all(config), out)
    return out / "monitoring"


def promtool_test(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), "test", "rules", "alert_rules_test.yml"], cwd=folder, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("alerts", [{}, CUSTOM], ids=["defaults", "custom"])
def test_every_rule_fires_on_bad_and_stays_quiet_on_healthy_series(tmp_path: Path, alerts: dict) -> None:
    folder = rendered(tmp_path, alerts)
    result = promtool_test(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [r["alert"] for g in yaml.safe_load((folder / "alert_rules.yml").read_text())["groups"] for r in g["rules"]]
    tests = [t["name"] for t in yaml.safe_load((folder / "alert_rules_test.yml").read_text())["tests"]]
    assert sorted(rules) == ["BackendDown", "HighErrorRate", "SlowModelInference", "SlowResponses"]
    for rule in rules:
        assert f"{rule} fires on a bad series" in tests and f"{rule} stays quiet on a healthy series" in tests


@pytest.mark.parametrize(
    ("rules_alerts", "failing"),
    [
        ({"error_rate": 0.6}, FIRES.format("HighErrorRate")),  # the bad series (52.5% errors) no longer crosses it
        ({"p95_seconds": 10.0}, FIRES.format("SlowResponses")),
        ({"error_rate": 0.01}, "name: HighErrorRate stays quiet"),  # the healthy 2.5% now crosses it
        ({"pending": "1h"}, FIRES.format("HighErrorRate")),  # still pending when the test looks
    ],
)
def test_tests_catch_rules_that_disagree_with_the_config(tmp_path: Path, rules_alerts: dict, failing: str) -> None:
    """The tests bite: rules rendered with other thresholds fail the tests made for the config."""
    folder = rendered(tmp_path, rules_alerts)
    (folder / "alert_rules_test.yml").write_text(rule_tests(resolve({}, environ={}, base_dir=tmp_path)))
    result = promtool_test(folder)
    assert result.returncode != 0
    assert failing in result.stdout + result.stderr
