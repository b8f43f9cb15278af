"""`target: swarm` on a real 3-node swarm with a real registry (the session's test cluster):
images pushed from the host engine to a registry that requires credentials (from the project's
env file; the nodes pull with the ones the service update carries), deploys pinned to their digests and pulled by every node, a
rolling update of 3 replicas over 3 nodes under keep-alive load through nginx, doctor on the
healthy stack and with a node stopped, the dry run as text, remote tags listed and pruned.

flashfit runs as a user would: `images push` against the build engine (this host), everything
else with DOCKER_HOST naming the cluster's manager. The proxy's port is published from the
manager to this host's loopback. No IPVS here: dnsrr endpoints and host-mode ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ops.cluster.cluster import Cluster, app_image, docker, ready_nodes
from tests.integration.ops.fake_backend.harness import PROXY_IMAGE, Load, make_project, wait_on_condition

pytestmark = pytest.mark.integration
REPLICAS = 3


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    project = make_project(root, "mn")
    project.http_port = cluster.http_port
    proxy = cluster.push(PROXY_IMAGE, f"{cluster.prefix}/nginx", "bookworm")
    models, data = cluster.shared_dir / "models", cluster.shared_dir / "data"  # the same path on every node
    models.mkdir()
    data.mkdir()
    project.write_config(
        target="swarm",
        replicas=REPLICAS,
        volumes__models=str(models),
        volumes__data=str(data),
        services__nginx__image=proxy,
        registry={"server": cluster.registry, "repository": f"{cluster.prefix}/app"},
        swarm={"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
        healthcheck={"interval": "1s", "timeout": "2s", "retries": 3, "start_period": "30s"},
        deploy={"deadline": "120s", "drain_timeout": "5s", "monitor_window": "2s", "parallelism": 1},
    )
    with (root / ".env").open("a") as env:  # the cluster registry's credentials, as a user keeps them
        env.write(f"REGISTRY_USERNAME={cluster.registry_user}\nREGISTRY_PASSWORD={cluster.registry_password}\n")
    image = app_image()
    try:
        for version in ("v1", "v2", "v3"):
            project.tag(image, version)
            pushed = project.flashfit("images", "push", "--version", version, "--json")
            assert pushed.code == 0, pushed.stdout + pushed.stderr
            assert pushed.json()["pushed"].startswith(f"{cluster.registry}/{cluster.prefix}/app:{version}@sha256:")
        project.cluster = cluster
        yield project
    finally:  # the stack itself goes with the cluster; the host's tags go here
        project.cleanup()


def on_cluster(project, *args: str):
    return project.flashfit(*args, env={"DOCKER_HOST": project.cluster.docker_host})


def backend_tasks(cluster: Cluster, project) -> list[tuple[str, str]]:
    """(node, image) of each running backend task, as the manager sees them."""
    client = cluster.client()
    nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    service = client.services.get(f"{project.name}_backend")
    return sorted(
        (nodes[t["NodeID"]], t["Spec"]["ContainerSpec"]["Image"])
        for t in service.tasks(filters={"desired-state": "running"})
        if t["Status"]["State"] == "running"
    )


def test_rolling_update_over_three_nodes_from_the_registry(stack, cluster: Cluster) -> None:
    first = on_cluster(stack, "deploy", "--version", "v1", "--json")
    assert first.code == 0, first.stdout + first.stderr
    tasks = backend_tasks(cluster, stack)
    digest_v1 = docker("image", "inspect", "--format", "{{index .RepoDigests 0}}", f"{cluster.registry}/{cluster.prefix}/app:v1").split("@")[1]
    assert [image for _, image in tasks] == [f"{cluster.registry}/{cluster.prefix}/app:v1@{digest_v1}"] * REPLICAS
    assert sorted(node for node, _ in tasks) == [n.name for n in cluster.nodes]  # one replica per node
    for node in cluster.nodes:  # every node pulled the image from the registry, by digest
        assert digest_v1 in cluster.node_docker(node, "image", "ls", "--digests", "--format", "{{.Digest}}")

    with Load(stack.url + "/health", threads=6, keep_alive=True) as load:
        second = on_cluster(stack, "deploy", "--version", "v2", "--json")
    assert second.code == 0, second.stdout + second.stderr
    load.assert_no_failed_request()
    tasks = backend_tasks(cluster, stack)
    assert [image.split("@")[0] for _, image in tasks] == [f"{cluster.registry}/{cluster.prefix}/app:v2"] * REPLICAS
    # Start-first places each new task before the old one stops, and Swarm never rebalances:
    # the spread after an update is Swarm's choice, but never one node for all.
    assert len({node for node, _ in tasks}) >= 2


def test_dry_run_prints_the_plan_as_text(stack) -> None:
    planned = on_cluster(stack, "deploy", "--version", "v3", "--dry-run")
    assert planned.code == 0, planned.stderr
    text = planned.stdout + planned.stderr
    assert "None" not in text and "serves nothing" not in text
    assert f"update service {stack.name}_backend with {stack.cluster.registry}/" in planned.stdout
    assert "app:v3@sha256:" in planned.stdout
    assert "would deploy v3 on the swarm" in planned.stderr


def test_doctor_on_the_healthy_stack_then_a_node_down(stack, cluster: Cluster) -> None:
    assert backend_tasks(cluster, stack), "the rolling update test deploys first"
    healthy = on_cluster(stack, "doctor", "--json")
    failures = [c for c in healthy.json() if c["status"] == "failure"]
    assert healthy.code == 0 and failures == [], failures
    worker = cluster.nodes[-1]
    cluster.stop_node(worker)
    try:
        wait_on_condition(lambda: ready_nodes(cluster) == 2, 60, 1, "the manager to see the node down")
        down = on_cluster(stack, "doctor", "--json")
        assert down.code == 1
        swarm = next(c for c in down.json() if c["check"] == "swarm")
        assert swarm["status"] == "failure" and f"node {worker.name} is down" in swarm["summary"]
    finally:
        cluster.start_node(worker)
        wait_on_condition(lambda: ready_nodes(cluster) == 3, 90, 1, "the node to rejoin")


def test_remote_tags_listed_and_pruned(stack, cluster: Cluster) -> None:
    wrong = stack.flashfit("images", "remote", env={"REGISTRY_PASSWORD": "not-the-password"})
    assert wrong.code != 0 and "refused the credentials" in wrong.stdout + wrong.stderr
    assert "not-the-password" not in wrong.stdout + wrong.stderr
    assert cluster.registry_password not in wrong.stdout + wrong.stderr
    # Two builds of their own (distinct digests), v5 the newer; v1-v3 share one image.
    for version in ("v4", "v5"):
        docker("build", "-q", "-t", f"{stack.repo}:{version}", "-", input=f"FROM {app_image()}\nLABEL build={version}\n".encode())
        stack.tags.append(f"{stack.repo}:{version}")
        assert stack.flashfit("images", "push", "--version", version).code == 0
    listed = stack.flashfit("images", "remote", "--json")
    assert listed.code == 0, listed.stderr
    tags = {t["version"]: t["digest"] for t in listed.json()["tags"]}
    assert set(tags) == {"v1", "v2", "v3", "v4", "v5"} and len(set(tags.values())) == 3
    # Kept: v2 runs (v1 is its previous spec, Swarm's rollback target), v5 is the newest build.
    # v3 shares v1/v2's digest: deleting it would delete them. v4 goes.
    pruned = on_cluster(stack, "images", "prune", "--remote", "--keep", "1", "--json")
    assert pruned.code == 0, pruned.stderr
    assert pruned.json()["removed"] == ["v4"]
    assert pruned.json()["refused"] == {"v3": "shares its digest with a kept tag"}
    after = stack.flashfit("images", "remote", "--json").json()["tags"]
    assert {t["version"] for t in after} == {"v1", "v2", "v3", "v5"}
