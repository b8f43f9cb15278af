"""The ops side of the shared catalogue: the `catalog:` section reaches the backend's env in every
compose and stack file (credentials never), and the doctor check's judgement of replica states."""

from __future__ import annotations

import pytest
import yaml

from flashfit_ops.config import resolve
from flashfit_ops.doctor.checks.catalog import judge, task_status
from flashfit_ops.doctor.result import FAILURE, OK
from flashfit_ops.errors import ConfigError
from flashfit_ops.render import render_all

URL = "s3://shop-catalogue/prod"


def _backend_env(text: str) -> dict[str, str]:
    services = yaml.safe_load(text)["services"]
    backend = next(s for name, s in services.items() if "backend" in name)
    return {k: str(v) for k, v in backend["environment"].items()}


def test_the_catalog_section_reaches_the_backend_env_of_compose_and_stack_files() -> None:
    config = resolve({"catalog": {"sync_url": URL, "endpoint_url": "http://minio:9000", "region": "eu-west-1",
                                  "poll_interval": 0.25, "checkpoint_every": 50}}, environ={"AWS_SECRET_ACCESS_KEY": "never-rendered"})
    files = render_all(config)
    for name in ("docker-compose.prod.yml", "docker-compose.blue.yml", "docker-stack.yml"):
        env = _backend_env(files[name].text)
        assert env["CATALOG_SYNC_URL"] == URL
        assert env["CATALOG_SYNC_ENDPOINT"] == "http://minio:9000"
        assert env["CATALOG_SYNC_REGION"] == "eu-west-1"
        assert env["CATALOG_SYNC_POLL_INTERVAL"] == "0.25"
        assert env["CATALOG_SYNC_CHECKPOINT_EVERY"] == "50"
        assert "never-rendered" not in files[name].text


def test_without_a_sync_url_nothing_is_rendered() -> None:
    files = render_all(resolve({}, environ={}))
    assert "CATALOG_SYNC" not in files["docker-compose.prod.yml"].text


@pytest.mark.parametrize("bad", ["s3://Bad_Bucket/x", "s3://bucket/pre fix", "https://bucket/x", "s3://b/x;rm"])
def test_a_bad_sync_url_is_a_field_error(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"catalog": {"sync_url": bad}}, environ={})
    [problem] = info.value.problems
    assert problem.path == "catalog.sync_url" and "s3://bucket/prefix" in problem.message


def _status(applied: int, head: int, behind: float = 0.0, **extra: object) -> dict:
    return {"log": URL, "applied_seq": applied, "log_head_seq": head, "behind_seconds": behind, "caught_up": True,
            "problem": None, **extra}


def test_replicas_at_the_head_or_a_poll_behind_are_healthy() -> None:
    finding = judge({"a": _status(5, 5), "b": _status(4, 5, behind=0.4), "c": _status(5, 5)}, URL)
    assert finding.status == OK and "3 replica(s)" in finding.summary and "commit 5" in finding.summary


def test_a_replica_behind_for_long_is_named() -> None:
    finding = judge({"a": _status(5, 5), "b": _status(3, 3, behind=30.0)}, URL)
    assert finding.status == FAILURE
    assert "b is behind the shared log: commit 3 of 5, for 30s" in finding.summary


def test_a_refused_record_a_missing_sync_and_another_log_are_failures() -> None:
    refused = judge({"a": _status(2, 3, problem="segments/ab does not match its sha256 (tampered or damaged): refused")}, URL)
    assert refused.status == FAILURE and "stuck at commit 2: segments/ab does not match" in refused.summary
    missing = judge({"a": None}, URL)
    assert missing.status == FAILURE and "does not follow" in missing.summary
    other = judge({"a": _status(1, 1, log="s3://other/x")}, URL)
    assert other.status == FAILURE and "s3://other/x" in other.summary


def test_a_task_whose_health_body_was_cut_in_transit_is_named_as_such() -> None:
    assert task_status(False, "") == "/health does not answer"
    assert "did not arrive whole" in task_status(True, "")
    assert task_status(True, '{"catalog_sync": {"applied_seq": 3}}') == {"applied_seq": 3}
    assert task_status(True, "<html>") == "/health did not answer JSON"
    assert judge({"a": task_status(True, "")}, URL).status == FAILURE
