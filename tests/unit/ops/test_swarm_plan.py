"""Swarm as data: the rendered stack parses into the service definitions deploy creates,
SDK arguments follow from them, and plans depend only on config and observed cluster state."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashfit_ops.config import resolve
from flashfit_ops.errors import Unavailable
from flashfit_ops.render import render_stack
from flashfit_ops.swarm.deploy import NGINX_CONFIG, prepare
from flashfit_ops.swarm.plan import (
    AwaitConvergence,
    CreateSwarmObject,
    EnsureSwarmNetwork,
    ObservedService,
    ProbeThroughProxy,
    PruneSwarmObjects,
    SwarmObserved,
    UpsertService,
    object_name,
    plan_swarm_deploy,
)
from flashfit_ops.swarm.sdk import service_kwargs
from flashfit_ops.swarm.spec import parse_stack

MULTI_NODE = {
    "project": "shop",
    "target": "swarm",
    "replicas": 3,
    "deploy": {"parallelism": 1, "monitor_window": "15s"},
    "swarm": {"constraints": ["node.labels.flashfit.models == true"], "update_delay": "2s"},
    "resources": {"limits": {"memory": "4G", "cpus": 2}, "reservations": {"memory": "2G", "cpus": 1}},
}
SINGLE_NODE = {
    "project": "shop",
    "target": "swarm",
    "replicas": 3,
    "swarm": {"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
}


def stack_for(data: dict, version: str = "v2"):
    return parse_stack(render_stack(resolve(data, environ={}), version))


def test_backend_definition_follows_the_config() -> None:
    backend = stack_for(MULTI_NODE).services["backend"]
    assert backend.image == "flashfit/backend:v2"
    assert backend.replicas == 3
    assert backend.update.order == "start-first" and backend.update.failure_action == "rollback"
    assert backend.update.monitor == 15 and backend.update.delay == 2
    assert backend.constraints == ("node.labels.flashfit.models == true",)
    assert backend.limits == {"nano_cpus": 2_000_000_000, "memory_bytes": 4 << 30}
    assert backend.reservations == {"nano_cpus": 1_000_000_000, "memory_bytes": 2 << 30}
    assert {ref.source for ref in backend.secrets} == {"jwt_secret_key", "secret_key"}
    assert "JWT_SECRET_KEY" not in backend.env and backend.env["JWT_SECRET_KEY_FILE"] == "/run/secrets/jwt_secret_key"
    # Volumes are per node: each node keeps its own copy of the indices under the same name.
    assert [(m.source, m.kind, m.read_only) for m in backend.mounts] == [("model_cache", "volume", True), ("vector_indices", "volume", False)]


def test_proxy_placement_on_hosts_without_routing_mesh() -> None:
    nginx = stack_for(SINGLE_NODE).services["nginx"]
    assert [(p.published, p.target, p.mode) for p in nginx.ports] == [(80, 80, "host")]
    assert nginx.max_replicas_per_node == 1  # a host port binds once per node
    assert nginx.update.order == "stop-first"
    assert nginx.endpoint_mode == "dnsrr"
    multi = stack_for(MULTI_NODE).services["nginx"]
    assert multi.ports[0].mode == "ingress" and multi.max_replicas_per_node is None
    assert multi.replicas == 2 and multi.constraints == ("node.role == manager",)


def test_sdk_arguments() -> None:
    stack = stack_for(SINGLE_NODE)
    kwargs = service_kwargs(
        "shop",
        stack.services["backend"],
        version="v2",
        secret_ids={"jwt_secret_key": ("id1", "shop_jwt_secret_key_abc")},
        config_ids={},
    )
    assert kwargs["name"] == "shop_backend"
    assert kwargs["labels"]["com.docker.stack.namespace"] == "shop"
    assert kwargs["container_labels"]["io.flashfit.version"] == "v2"
    assert kwargs["mode"].mode == "replicated" and kwargs["mode"].replicas == 3
    assert kwargs["endpoint_spec"]["Mode"] == "dnsrr"
    assert kwargs["update_config"]["Order"] == "start-first"
    assert kwargs["update_config"]["FailureAction"] == "rollback"
    assert [s["SecretName"] for s in kwargs["secrets"]] == ["shop_jwt_secret_key_abc"]  # an unset secret is left out
    assert kwargs["networks"][0]["Target"] == "shop_flashfit" and kwargs["networks"][0]["Aliases"] == ["backend"]
    assert kwargs["mounts"][0]["Source"] == "shop_model_cache" and kwargs["mounts"][0]["ReadOnly"] is True
    assert kwargs["healthcheck"]["Test"][:2] == ["CMD", "flashfit-server"]
    assert kwargs["stop_grace_period"] == 30 * 10**9
    # The stack's log rotation (service_spec.py) reaches the tasks `flashfit deploy` creates too.
    assert (kwargs["log_driver"], kwargs["log_driver_options"]) == ("json-file", {"max-file": "3", "max-size": "10m"})
    nginx = service_kwargs("shop", stack.services["nginx"], version="v2", secret_ids={}, config_ids={"nginx_config": ("id2", "c")})
    assert "log_driver" not in nginx


def test_secret_and_config_objects_are_content_addressed(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JWT_SECRET_KEY=first-secret-value-long-enough\n")
    config = resolve(SINGLE_NODE, environ={}, base_dir=tmp_path)
    materials = prepare(config, "v2", environ={})
    name = materials.object_names[("secret", "jwt_secret_key")]
    assert name == object_name("shop", "jwt_secret_key", b"first-secret-value-long-enough")
    assert ("secret", "secret_key") not in materials.object_names
    assert materials.dropped_env == {"backend": ("SECRET_KEY_FILE",)}
    assert ("config", NGINX_CONFIG) in materials.object_names
    # The plan names objects, never their content.
    observed = SwarmObserved(swarm_active=True, is_manager=True)
    steps = plan_swarm_deploy(config, observed, materials.stack, object_names=materials.object_names, digests=materials.digests)
    assert "first-secret-value" not in repr([s.to_dict() for s in steps])
    (tmp_path / ".env").write_text("JWT_SECRET_KEY=second-secret-value-long-enough\n")
    assert prepare(config, "v2", environ={}).object_names[("secret", "jwt_secret_key")] != name


def test_the_catalogue_buckets_credentials_are_secrets_never_environment(tmp_path: Path) -> None:
    """Every node's replicas follow the shared log in S3, so every task needs the bucket's
    credentials: as Swarm secrets (files the server reads), never values in the service spec."""
    (tmp_path / ".env").write_text("AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=bucket-secret-value\n")
    data = {**SINGLE_NODE, "catalog": {"sync_url": "s3://shop-catalog/prod", "endpoint_url": "http://minio:9000"}}
    config = resolve(data, environ={}, base_dir=tmp_path)
    materials = prepare(config, "v2", environ={})
    backend = materials.stack.services["backend"]
    assert {"aws_access_key_id", "aws_secret_access_key"} <= {ref.source for ref in backend.secrets}
    assert backend.env["AWS_SECRET_ACCESS_KEY_FILE"] == "/run/secrets/aws_secret_access_key"
    assert backend.env["CATALOG_SYNC_URL"] == "s3://shop-catalog/prod"
    assert not any(key in backend.env for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert materials.object_names[("secret", "aws_secret_access_key")] == object_name("shop", "aws_secret_access_key", b"bucket-secret-value")
    assert "AWS_SESSION_TOKEN_FILE" in materials.dropped_env["backend"]  # unset: left out, with its *_FILE
    steps = plan_swarm_deploy(config, SwarmObserved(swarm_active=True, is_manager=True), materials.stack,
                              object_names=materials.object_names, digests=materials.digests)  # fmt: skip
    assert "bucket-secret-value" not in repr([s.to_dict() for s in steps]) + repr(materials.stack)
    # Without a shared catalogue, no AWS secret is asked for.
    plain = prepare(resolve(SINGLE_NODE, environ={}, base_dir=tmp_path), "v2", environ={}).stack.services["backend"]
    assert not any(ref.source.startswith("aws_") for ref in plain.secrets)


def test_fresh_cluster_plan() -> None:
    config = resolve(SINGLE_NODE, environ={})
    stack = stack_for(SINGLE_NODE)
    names = {("config", "nginx_config"): "shop_nginx_config_1", ("secret", "jwt_secret_key"): "shop_jwt_secret_key_2"}
    steps = plan_swarm_deploy(config, SwarmObserved(True, True), stack, object_names=names, digests={"backend": "b1", "nginx": "n1"})
    assert steps == [
        EnsureSwarmNetwork("shop_flashfit"),
        CreateSwarmObject("config", "nginx_config", "shop_nginx_config_1"),
        CreateSwarmObject("secret", "jwt_secret_key", "shop_jwt_secret_key_2"),
        UpsertService("backend", "shop_backend", "flashfit/backend:v2", "create"),
        AwaitConvergence("shop_backend", 3, 120.0),
        UpsertService("nginx", "shop_nginx", "nginx:alpine", "create"),
        AwaitConvergence("shop_nginx", 1, 120.0),
        ProbeThroughProxy("http://127.0.0.1:80/ready", 120.0),
        PruneSwarmObjects(("shop_jwt_secret_key_2", "shop_nginx_config_1")),
    ]


def test_update_plan_reuses_existing_objects() -> None:
    config = resolve(SINGLE_NODE, environ={})
    stack = stack_for(SINGLE_NODE, "v3")
    names = {("config", "nginx_config"): "shop_nginx_config_1"}
    observed = SwarmObserved(
        True,
        True,
        services={
            "backend": ObservedService("shop_backend", "flashfit/backend:v2", 3, spec_digest="b2"),
            "nginx": ObservedService("shop_nginx", "nginx:alpine", 1, spec_digest="n1"),
        },
        configs=frozenset({"shop_nginx_config_1"}),
        networks=frozenset({"shop_flashfit"}),
    )
    steps = plan_swarm_deploy(config, observed, stack, object_names=names, digests={"backend": "b3", "nginx": "n1"})
    # The proxy's definition did not change: it is left alone (an update would replace its task).
    assert [s.kind for s in steps] == [
        "upsert_service", "await_convergence", "await_convergence", "probe_through_proxy", "prune_swarm_objects",
    ]
    assert steps[0] == UpsertService("backend", "shop_backend", "flashfit/backend:v3", "update")


def test_a_new_version_changes_only_the_backend_digest(tmp_path: Path) -> None:
    config = resolve(SINGLE_NODE, environ={}, base_dir=tmp_path)
    v2, v3 = prepare(config, "v2", environ={}), prepare(config, "v3", environ={})
    assert v2.digests["nginx"] == v3.digests["nginx"]
    assert v2.digests["backend"] != v3.digests["backend"]
    assert prepare(config, "v2", environ={}).digests == v2.digests


def test_no_swarm_is_a_clear_error() -> None:
    config = resolve(SINGLE_NODE, environ={})
    with pytest.raises(Unavailable, match="not part of a swarm"):
        plan_swarm_deploy(config, SwarmObserved(False, False), stack_for(SINGLE_NODE), object_names={}, digests={})
    with pytest.raises(Unavailable, match="worker"):
        plan_swarm_deploy(config, SwarmObserved(True, False), stack_for(SINGLE_NODE), object_names={}, digests={})
