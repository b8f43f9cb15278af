"""`flashfit images prune` against the real engine: six backend versions (distinct images), one of
them used by a stopped container, two recorded as successful deploys; --keep 1 removes exactly the
rest, and a dry run removes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flashfit_ops.execute import history as hist
from tests.integration.ops.fake_backend.harness import BASE_IMAGE, docker_client, make_project, require_image

pytestmark = pytest.mark.integration

VERSIONS = ("v1", "v2", "v3", "v4", "v5", "v6")


@pytest.fixture
def project(tmp_path: Path):
    require_image(BASE_IMAGE)
    project = make_project(tmp_path, "prune")
    project.write_config()
    client = docker_client()
    for version in VERSIONS:  # built in order, so creation times follow it
        dockerfile = f"FROM {BASE_IMAGE}\nLABEL io.flashfit.test.version={version}\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{project.repo}:{version}", rm=True)
        project.tags.append(f"{project.repo}:{version}")
    yield project
    project.cleanup()


def remaining(project) -> set[str]:
    return {t.rpartition(":")[2] for image in docker_client().images.list(name=project.repo) for t in image.tags}


def deployed(project, *versions: str) -> None:
    for number, version in enumerate(versions):
        path = project.root / ".flashfit" / "history.jsonl"
        hist.append(path, {"event": "start", "id": f"d{number}", "version": version})
        hist.append(path, {"event": "finish", "id": f"d{number}", "result": "success"})


def test_prune_keeps_what_rollbacks_and_containers_need(project) -> None:
    client = docker_client()
    client.containers.create(f"{project.repo}:v1", ["true"], name=f"{project.name}-retained",
                             labels={"io.flashfit.project": project.name})
    deployed(project, "v2", "v3", "v4")  # v4 is the newest successful deploy

    planned = project.flashfit("images", "prune", "--keep", "1", "--dry-run", "--json")
    assert planned.code == 0, planned.stderr
    document = planned.json()
    assert {k["version"]: k["reason"] for k in document["keep"]} == {
        "v6": "newest build", "v4": "rollback target", "v1": "used by a container or service"}
    assert [r["version"] for r in document["remove"]] == ["v5", "v3", "v2"]
    assert remaining(project) == set(VERSIONS), "a dry run removes nothing"

    pruned = project.flashfit("images", "prune", "--keep", "1")
    assert pruned.code == 0, pruned.stderr
    assert "removed 3 of 6" in pruned.stderr + pruned.stdout
    assert remaining(project) == {"v1", "v4", "v6"}
    assert client.containers.get(f"{project.name}-retained").image.tags == [f"{project.repo}:v1"]
    history = project.flashfit("history", "--json").json()["history"]
    assert [(h["kind"], h["result"], h["exit_code"]) for h in history[3:]] == [("prune", "success", 0)]  # the dry run: none
    assert sorted(history[-1]["removed"]) == ["v2", "v3", "v5"] and history[-1]["refused"] == {}
    assert hist.successful_versions(project.root / ".flashfit" / "history.jsonl") == ["v4", "v3", "v2"]

    again = project.flashfit("images", "prune", "--keep", "1", "--json")
    assert again.code == 0 and again.json()["removed"] == []


def test_prune_waits_for_the_deploy_lock(project) -> None:
    from flashfit_ops.execute.lock import DeployLock, LockInfo

    lock = DeployLock(project.root / ".flashfit" / "lock")
    lock.acquire(LockInfo.mine(message="a deploy"), wait=0)
    try:
        held = project.flashfit("images", "prune", "--lock-wait", "0")
    finally:
        lock.release()
    assert held.code == 4, held.stderr
    assert "another deploy holds the lock" in held.stderr and "(a deploy)" in held.stderr
    assert remaining(project) == set(VERSIONS)
    assert hist.entries(project.root / ".flashfit" / "history.jsonl") == []  # refused before it began
