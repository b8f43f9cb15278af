"""A FlashFit stack with one catalogue on a test cluster, for the tests and the benchmark: the real
server image with the models baked in (`server.build.models: baked`, nothing mounted from any
node), pushed with `flashfit images push` to the cluster's registry; each node with its own data
volume; every replica following one shared log in moto's S3 server, which runs on this host on
the cluster network's gateway (the address the nodes' tasks reach this host at); the bucket's
credentials in the env file, which deploy turns into Swarm secrets.

Requests to one particular replica go from inside its task (`docker exec` on its node): the
overlay network is not reachable from this host."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flashfit_server.auth import mint_token
from tests.conftest import REPO_ROOT
from tests.integration.ops.cluster.cluster import Cluster, Node, docker
from tests.integration.ops.fake_backend.harness import BASE_IMAGE, PROXY_IMAGE, Project, make_project, real_server_image, tiny_models
from tests.integration.ops.test_backup_helpers import CREDENTIALS, start_moto, stop
from tests.server.conftest import image_bytes
from tests.server.integration.sync_helpers import new_bucket

# Runs inside a task (python3 and the stdlib are all the image needs): one HTTP request to the
# replica on 127.0.0.1, described as JSON on stdin; prints the status, a newline, the body.
IN_TASK = r"""
import base64, json, sys, urllib.error, urllib.request
spec = json.load(sys.stdin)
headers, body = dict(spec.get("headers", {})), None
if "json" in spec:
    body, headers["Content-Type"] = json.dumps(spec["json"]).encode(), "application/json"
elif "image" in spec:
    boundary = "flashfitboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{spec['name']}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + base64.b64decode(spec["image"]) + f"\r\n--{boundary}--\r\n".encode()
    headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
request = urllib.request.Request("http://127.0.0.1:8080" + spec["path"], data=body, headers=headers, method=spec["method"])
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        status, text = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read()
print(status)
print(text.decode(errors="replace"))
"""


@contextmanager
def moto_on_gateway(cluster: Cluster) -> Iterator[str]:
    """moto's S3 server on the cluster network's gateway; yields its endpoint URL."""
    gateway = docker("network", "inspect", "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", cluster.network)
    proc, endpoint = start_moto(host=gateway or cluster.subnet.rsplit(".", 1)[0] + ".1")
    try:
        yield endpoint
    finally:
        stop(proc)


def on_cluster(project: Project, *args: str) -> Any:
    """`flashfit *args` against the cluster's manager."""
    return project.flashfit(*args, env={"DOCKER_HOST": project.cluster.docker_host}, timeout=900)  # type: ignore[attr-defined]


def baked_image(project: Project, models: Path) -> None:
    """`flashfit build` of this tree with the models baked in, as the project's v1 (the
    dependency stage comes from the engine's build cache, as for real_server_image)."""
    from flashfit_ops.config.load import resolve
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.images.build import build_image

    real_server_image()  # the cached dependency stage, and the base images
    config = resolve({"server": {"image": project.repo, "build": {"base_image": BASE_IMAGE, "models": "baked"}},
                      "volumes": {"models": str(models)}}, base_dir=REPO_ROOT, environ={})  # fmt: skip
    project.tags.append(build_image(connect(), config, version="v1").image)


@contextmanager
def catalog_stack(cluster: Cluster, root: Path, s3_endpoint: str, replicas: int = 3, poll_interval: float = 0.2) -> Iterator[Project]:
    """Deploy v1 on the cluster (as a user would: build, push, deploy) and yield the project;
    its host tags are removed afterwards (the stack goes with the cluster)."""
    project = make_project(root, "cn")
    project.http_port = cluster.http_port
    proxy = cluster.push(PROXY_IMAGE, f"{cluster.prefix}/nginx", "bookworm")
    models = root / "models"
    shutil.copytree(tiny_models(root.parent), models)
    bucket = new_bucket(s3_endpoint)
    project.write_config(
        target="swarm",
        replicas=replicas,
        server={"image": project.repo, "build": {"models": "baked"}},  # the models travel in the image
        volumes__models="./models",  # where `flashfit build` takes them from; data stays a named volume per node
        services__nginx__image=proxy,
        registry={"server": cluster.registry, "repository": f"{cluster.prefix}/app"},
        swarm={"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
        catalog={"sync_url": f"s3://{bucket}/shop", "endpoint_url": s3_endpoint, "poll_interval": poll_interval},
        rate_limit__enabled=False,
        healthcheck={"interval": "1s", "timeout": "3s", "retries": 3, "start_period": "120s"},
        deploy={"deadline": "400s", "drain_timeout": "5s", "monitor_window": "2s", "parallelism": 1},
    )
    with (root / ".env").open("a") as env:  # as a user keeps them: the env file, never flashfit.yml
        env.write(f"REGISTRY_USERNAME={cluster.registry_user}\nREGISTRY_PASSWORD={cluster.registry_password}\n")
        env.write("".join(f"{k}={v}\n" for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"))
    project.jwt = (root / ".env").read_text().split("JWT_SECRET_KEY=", 1)[1].split("\n", 1)[0]  # type: ignore[attr-defined]
    project.cluster = cluster  # type: ignore[attr-defined]
    try:
        baked_image(project, models)
        pushed = project.flashfit("images", "push", "--version", "v1", "--json", timeout=900)
        assert pushed.code == 0, pushed.stdout + pushed.stderr
        deployed = on_cluster(project, "deploy", "--version", "v1", "--json")
        assert deployed.code == 0, deployed.stdout + deployed.stderr
        yield project
    finally:
        project.cleanup()
        shutil.rmtree(models, ignore_errors=True)


def task_on(project: Any, node: Node) -> str | None:
    """The running backend container on `node`, if there is one."""
    found = project.cluster.node_docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={project.name}_backend",
                                        "--filter", "status=running")  # fmt: skip
    return found.split()[0] if found else None


def run_in_task(node: Node, container: str, script: str, spec: dict[str, Any], timeout: float = 60) -> str:
    return docker("exec", "-i", node.name, "docker", "exec", "-i", container, "python3", "-c", script,
                  input=json.dumps(spec).encode(), timeout=timeout)  # fmt: skip


def in_task(node: Node, container: str, spec: dict[str, Any]) -> tuple[int, Any]:
    status, _, body = run_in_task(node, container, IN_TASK, spec).partition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), body


def add_item_spec(project: Any, seed: int) -> dict[str, Any]:
    token = mint_token(project.jwt, "tests", 600)
    return {"method": "POST", "path": "/api/items", "name": f"item {seed}", "image": base64.b64encode(image_bytes(seed)).decode(),
            "headers": {"Authorization": f"Bearer {token}"}}  # fmt: skip


def add_item(project: Any, node: Node, seed: int) -> int:
    container = task_on(project, node)
    assert container, f"no backend task on {node.name}"
    status, body = in_task(node, container, add_item_spec(project, seed))
    assert status == 201, body
    return int(body["id"])


def recommendable(project: Any, node: Node, item_id: int) -> bool:
    container = task_on(project, node)
    if not container:
        return False
    status, _ = in_task(node, container, {"method": "POST", "path": "/api/fusion/recommend", "json": {"item_id": item_id, "limit": 5}})
    return status == 200


def sync_status(project: Any, node: Node) -> dict[str, Any]:
    container = task_on(project, node)
    assert container, f"no backend task on {node.name}"
    status, body = in_task(node, container, {"method": "GET", "path": "/health"})
    assert status == 200, body
    return body["catalog_sync"]
