"""Single and rolling deploys end to end with the real server image behind a real nginx."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ops.fake_backend.harness import Load, make_project, real_server_image, tiny_models

pytestmark = pytest.mark.integration


def server_project(tmp_path: Path, tmp_path_factory, prefix: str, **config):
    project = make_project(tmp_path, prefix)
    models = tiny_models(tmp_path_factory.getbasetemp())
    project.write_config(volumes__models=str(models), **config)
    image = real_server_image()
    project.tag(image, "v1")
    project.tag(image, "v2")
    return project


@pytest.fixture
def single(tmp_path: Path, tmp_path_factory):
    project = server_project(tmp_path, tmp_path_factory, "sg", deploy__strategy="single")
    yield project
    project.cleanup()


@pytest.fixture
def rolling(tmp_path: Path, tmp_path_factory):
    project = server_project(tmp_path, tmp_path_factory, "rl", deploy__strategy="rolling", replicas=3, deploy__parallelism=1)
    yield project
    project.cleanup()


def test_single_replaces_the_container_without_failed_requests(single) -> None:
    first = single.flashfit("deploy", "--version", "v1")
    assert first.code == 0, first.stderr
    old = single.backends()[0].name
    # The container is the service the rendered files describe (flashfit_ops/service_spec.py), and
    # the server became ready on models it can only read.
    attrs = single.backends()[0].attrs
    assert {m["Destination"]: m["RW"] for m in attrs["Mounts"] if m["Destination"].startswith("/app/")} == {
        "/app/models": False, "/app/data": True}
    assert attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "flashfit-server", "probe", "--url", "http://127.0.0.1:8080/ready"]
    with Load(single.url + "/health") as load:  # keep-alive clients
        second = single.flashfit("deploy", "--version", "v2", "--json")
    assert second.code == 0, second.stderr
    load.assert_no_failed_request()
    assert single.served_version() == "v2"
    remaining = single.backends()
    assert [c.labels["io.flashfit.version"] for c in remaining] == ["v2"]  # the old one is removed
    assert old not in {c.name for c in remaining}
    kinds = [s["kind"] for s in second.json()["plan"]]
    assert kinds.index("wait_ready") < kinds.index("switch_upstreams") < kinds.index("drain")
    # rollback from an image (no container retained by `single`)
    listed = single.flashfit("rollback", "--json").json()
    assert listed["versions"] == [{"version": "v1", "how": "new containers from the image", "containers": []}]
    back = single.flashfit("rollback", "v1")
    assert back.code == 0, back.stderr
    assert single.served_version() == "v1"


def test_rolling_three_replicas_one_at_a_time(rolling) -> None:
    first = rolling.flashfit("deploy", "--version", "v1", "--json")
    assert first.code == 0, first.stderr
    assert len(first.json()["live"]) == 3
    with Load(rolling.url + "/health") as load:  # keep-alive clients
        second = rolling.flashfit("deploy", "--version", "v2", "--json")
    assert second.code == 0, second.stderr
    load.assert_no_failed_request()
    result = second.json()
    switches = [s for s in result["plan"] if s["kind"] == "switch_upstreams"]
    assert len(switches) == 3
    assert all(len(s["slots"]) == 3 for s in switches)  # capacity never drops below 3
    assert result["execution"]["reloads"] == 0  # three slots before and after: no nginx reload
    running = rolling.backends(state="running")
    assert sorted(c.labels["io.flashfit.version"] for c in running) == ["v2", "v2", "v2"]
    assert sorted(c.labels["io.flashfit.replica"] for c in running) == ["1", "2", "3"]
    # the old replicas are kept, stopped, for `flashfit rollback` (deploy.keep_versions)
    assert sorted(c.status for c in rolling.backends(version="v1")) == ["exited"] * 3
    status = rolling.flashfit("status", "--json").json()
    assert status["replicas"] == {"live": 3, "ready": 3} and status["live_version"] == "v2"
