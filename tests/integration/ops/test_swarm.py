"""Swarm end to end on a single-node swarm the tests create (and leave again): the real server
image behind nginx as Swarm services, a rolling update of 2 replicas under keep-alive load with no
failed request, a version that crashes rolled back by Swarm itself (non-zero exit),
`flashfit rollback` through the service's rollback, status per task, and the rendered stack file
describing exactly what was created.

This kernel has no IPVS, so the routing mesh does not work here: the tests use host-mode ports and
DNS round-robin endpoints (swarm.publish_mode: host, swarm.endpoint_mode: dnsrr)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from tests.integration.ops.fake_backend.harness import (
    Load,
    docker_client,
    make_project,
    real_server_image,
    require_image,
    tiny_models,
    wait_on_condition,
)

pytestmark = pytest.mark.integration
PROXY_IMAGE = "flashfit/nginx:bookworm"
# Two replicas keep the suite quick; benchmarks/bench_swarm_zero_downtime.py rolls three.
REPLICAS = 2


@pytest.fixture(scope="module")
def swarm():
    client = docker_client()
    state = client.info()["Swarm"]["LocalNodeState"]
    created = state != "active"
    if created:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    yield client
    if created:
        subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


def crashing_image(source: str, tag: str) -> str:
    """The real server image whose command fails at once (the service's environment would
    override a broken setting baked into the image, so the command itself is broken)."""
    client = docker_client()
    dockerfile = f'FROM {source}\nCMD ["sh", "-c", "echo this build is broken >&2; exit 3"]\n'
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


@pytest.fixture
def project(swarm, tmp_path: Path, tmp_path_factory):
    require_image(PROXY_IMAGE)
    project = make_project(tmp_path, "sw")
    models = tiny_models(tmp_path_factory.getbasetemp())
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["chown", "1000:1000", str(data)], check=True)
    project.write_config(
        target="swarm",
        replicas=REPLICAS,
        volumes__models=str(models),
        volumes__data=str(data),
        swarm={"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
        # A generous start period: on a busy 2-core host the server can take 40 s to load.
        healthcheck={"interval": "1s", "timeout": "3s", "retries": 3, "start_period": "120s"},
        deploy={"deadline": "240s", "drain_timeout": "5s", "monitor_window": "2s", "parallelism": 1},
    )
    image = real_server_image()
    project.tag(image, "v1")
    project.tag(image, "v2")
    project.tags.append(crashing_image(image, f"{project.repo}:broken"))
    yield project
    remove_stack(swarm, project.name)
    project.cleanup()


def remove_stack(client, name: str) -> None:
    label = {"label": f"com.docker.stack.namespace={name}"}
    for service in client.services.list(filters=label):
        service.remove()
    wait_on_condition(lambda: not client.containers.list(all=True, ignore_removed=True, filters=label), 60, 0.5, "the stack's containers to go")
    for obj in [*client.secrets.list(filters=label), *client.configs.list(filters=label)]:
        obj.remove()
    for network in client.networks.list(filters=label):
        wait_on_condition(lambda: _removed(network), 30, 0.5, f"network {network.name} to be removed")


def _removed(network) -> bool:
    try:
        network.remove()
    except Exception as error:  # still in use while tasks shut down
        return "not found" in str(error).lower()
    return True


def task_images(client, service_name: str) -> list[str]:
    service = client.services.get(service_name)
    return sorted(
        t["Spec"]["ContainerSpec"]["Image"].split("@")[0]
        for t in service.tasks(filters={"desired-state": "running"})
        if t["Status"]["State"] == "running"
    )


def no_failed_request(load: Load, client, project) -> None:
    """load.assert_no_failed_request(), with what nginx logged as errors when it fails: the
    statuses say that requests failed, nginx's error log says why (resolution, refused, timeout)."""
    try:
        load.assert_no_failed_request()
    except AssertionError as failure:
        said = []
        for container in client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={project.name}_nginx"}):
            log = container.logs(stdout=False, stderr=True, tail=400).decode(errors="replace")
            said += [line for line in log.splitlines() if "[error]" in line or "[crit]" in line][-15:]
        raise AssertionError(f"{failure}\nnginx's last errors:\n" + "\n".join(said)) from None


def test_swarm_rolling_update_rollback_and_status(project, swarm) -> None:
    first = project.flashfit("deploy", "--version", "v1", "--json")
    assert first.code == 0, first.stderr
    assert first.json()["target"] == "swarm"
    backend = f"{project.name}_backend"
    assert task_images(swarm, backend) == [f"{project.repo}:v1"] * REPLICAS
    assert project.get("/ready").status_code == 200
    assert_rendered_stack_matches(project, swarm)

    # Secrets are Swarm secrets mounted as files, never plain environment variables.
    spec = swarm.services.get(backend).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert not any(item.startswith("JWT_SECRET_KEY=") for item in spec.get("Env", []))
    assert [s["File"]["Name"] for s in spec["Secrets"]] == ["jwt_secret_key"]

    with Load(project.url + "/health", threads=4, keep_alive=True) as load:
        second = project.flashfit("deploy", "--version", "v2", "--json")
    assert second.code == 0, second.stderr
    no_failed_request(load, swarm, project)
    assert task_images(swarm, backend) == [f"{project.repo}:v2"] * REPLICAS

    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    services = {s["role"]: s for s in status.json()["services"]}
    assert [t["health"] for t in services["backend"]["tasks"]] == ["healthy"] * REPLICAS
    assert {t["node"] for t in services["backend"]["tasks"]} and services["nginx"]["replicas"] == 1

    # A version whose tasks crash: Swarm rolls it back, flashfit exits non-zero, v2 keeps serving.
    with Load(project.url + "/health", threads=2, keep_alive=True) as load:
        broken = project.flashfit("deploy", "--version", "broken", "--json")
    assert broken.code == 1, broken.stdout + broken.stderr
    assert "rolled" in (broken.stdout + broken.stderr)
    assert task_images(swarm, backend) == [f"{project.repo}:v2"] * REPLICAS
    no_failed_request(load, swarm, project)

    # Swarm's automatic rollback left the failed spec as the previous one: `flashfit rollback`
    # offers the earlier good versions instead, and goes back to v1 with a rolling update.
    listed = project.flashfit("rollback", "--json")
    assert listed.code == 0, listed.stderr
    assert listed.json()["live_version"] == "v2"
    assert [v["version"] for v in listed.json()["versions"]] == ["v1"]
    with Load(project.url + "/health", threads=2, keep_alive=True) as load:
        back = project.flashfit("rollback", "v1", "--json")
    assert back.code == 0, back.stderr
    assert back.json()["how"] == "rolling update"
    assert task_images(swarm, backend) == [f"{project.repo}:v1"] * REPLICAS
    no_failed_request(load, swarm, project)

    # After a normal update the previous spec is the version before: Swarm's own rollback.
    assert project.flashfit("deploy", "--version", "v2").code == 0
    listed = project.flashfit("rollback", "--json").json()
    assert listed["versions"][0] == {"version": "v1", "how": "swarm rollback (previous spec)"}
    with Load(project.url + "/health", threads=2, keep_alive=True) as load:
        back = project.flashfit("rollback", "v1", "--json")
    assert back.code == 0, back.stderr
    assert back.json()["how"] == "swarm rollback"
    assert task_images(swarm, backend) == [f"{project.repo}:v1"] * REPLICAS
    no_failed_request(load, swarm, project)

    history = project.flashfit("history", "--json").json()["history"]
    assert [(h["kind"], h["version"], h["result"]) for h in history] == [
        ("deploy", "v1", "success"),
        ("deploy", "v2", "success"),
        ("deploy", "broken", "failed"),
        ("rollback", "v1", "success"),
        ("deploy", "v2", "success"),
        ("rollback", "v1", "success"),
    ]


def assert_rendered_stack_matches(project, swarm) -> None:
    """`flashfit render`'s docker-stack.yml describes exactly the service deploy created."""
    import yaml

    out = project.root / "rendered"
    assert project.flashfit("render", "--out", str(out)).code == 0
    stack = yaml.safe_load((out / "docker-stack.yml").read_text())["services"]["backend"]
    service = swarm.services.get(f"{project.name}_backend").attrs["Spec"]
    task = service["TaskTemplate"]
    assert service["Mode"]["Replicated"]["Replicas"] == stack["deploy"]["replicas"]
    assert service["UpdateConfig"]["Order"] == stack["deploy"]["update_config"]["order"]
    assert service["UpdateConfig"]["FailureAction"] == stack["deploy"]["update_config"]["failure_action"]
    assert service["EndpointSpec"]["Mode"] == stack["deploy"]["endpoint_mode"]
    assert task["RestartPolicy"]["Condition"].replace("-", "_") == stack["deploy"]["restart_policy"]["condition"].replace("-", "_")
    assert task["ContainerSpec"]["Healthcheck"]["Test"] == stack["healthcheck"]["test"]
    env = dict(item.split("=", 1) for item in task["ContainerSpec"]["Env"])
    assert {k: str(v) for k, v in stack["environment"].items() if k != "SECRET_KEY_FILE"}.items() <= env.items()
    assert task["Resources"]["Limits"]["MemoryBytes"] == 2 << 30
