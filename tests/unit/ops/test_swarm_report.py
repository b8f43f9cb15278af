"""`flashfit deploy|rollback` on swarm print Swarm's results as text (they carry no strategy,
colours or URL list: the old text read `deployed v2 (None) in 0.0s: None serves nothing`)."""

from __future__ import annotations

import pytest

from flashfit_ops import console
from flashfit_ops.cli.deploy_cmds import _report



@pytest.fixture(autouse=True)
def human_output(monkeypatch):
    monkeypatch.setattr(console, "_json_mode", False)  # an earlier --json test may have left it on


PLAN = [{"kind": "upsert_service", "description": "update service demo_backend with reg/app:v2@sha256:ab"},
        {"kind": "await_convergence", "description": "wait until demo_backend runs 3 healthy task(s) (deadline 120s)"}]


def test_a_swarm_dry_run_prints_the_plan(capsys) -> None:
    _report({"target": "swarm", "version": "v2", "plan": PLAN, "result": "planned"}, False, "deployed")
    out, err = capsys.readouterr()
    assert "  1. update service demo_backend with reg/app:v2@sha256:ab" in out
    assert "  2. wait until demo_backend runs 3 healthy task(s)" in out
    assert "would deploy v2 on the swarm" in err and "None" not in out + err


def test_a_swarm_deploy_and_rollback_name_what_happened(capsys) -> None:
    _report({"target": "swarm", "version": "v2", "plan": PLAN, "result": "success", "duration_s": 12.5}, False, "deployed")
    _report({"target": "swarm", "version": "v1", "how": "swarm rollback", "result": "success", "duration_s": 3.0}, False, "rolled back to")
    out, err = capsys.readouterr()
    text = out + err
    assert "deployed v2 (swarm rolling update) in 12.5s" in text
    assert "rolled back to v1 (swarm rollback) in 3.0s" in text
    assert "None" not in text and "serves nothing" not in text
