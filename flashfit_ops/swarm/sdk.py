"""ServiceDefinition -> keyword arguments of docker-py's `services.create` / `Service.update`.

Swarm objects carry the labels `docker stack deploy` uses, so `docker stack ps PROJECT` and
`docker stack rm PROJECT` work on what flashfit created.
"""

from __future__ import annotations

from typing import Any

from flashfit_ops.labels import LABEL_PROJECT, LABEL_ROLE, LABEL_SPEC_DIGEST as SPEC_DIGEST_LABEL, LABEL_STACK_NAMESPACE as STACK_LABEL
from flashfit_ops.labels import LABEL_TARGET, LABEL_VERSION
from flashfit_ops.swarm.spec import ServiceDefinition, UpdatePolicy

NANOSECONDS = 1_000_000_000


def service_name(project: str, key: str) -> str:
    return f"{project}_{key}"


def network_name(project: str, key: str) -> str:
    return f"{project}_{key}"


def stack_labels(project: str, role: str, version: str | None = None) -> dict[str, str]:
    labels = {STACK_LABEL: project, LABEL_PROJECT: project, LABEL_ROLE: role, LABEL_TARGET: "swarm"}
    if version:
        labels[LABEL_VERSION] = version
    return labels


def _policy(policy: UpdatePolicy, cls: Any) -> Any:
    return cls(
        parallelism=policy.parallelism,
        delay=int(policy.delay * NANOSECONDS),
        failure_action=policy.failure_action,
        monitor=int(policy.monitor * NANOSECONDS),
        order=policy.order,
    )


def service_kwargs(
    project: str,
    definition: ServiceDefinition,
    *,
    version: str | None,
    secret_ids: dict[str, tuple[str, str]],
    config_ids: dict[str, tuple[str, str]],
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Arguments for `client.services.create(**kwargs)`; secret_ids/config_ids map a stack name to
    the (id, name) of the Swarm object holding its current content."""
    from docker import types

    role = definition.key
    env = {**definition.env, **(extra_env or {})}
    kwargs: dict[str, Any] = {
        "name": service_name(project, definition.key),
        "image": definition.image,
        "env": [f"{k}={v}" for k, v in sorted(env.items())],
        "labels": {**stack_labels(project, role, version), "com.docker.stack.image": definition.image},
        "container_labels": stack_labels(project, role, version),
        "mode": types.ServiceMode("replicated", replicas=definition.replicas),
        "mounts": [
            types.Mount(
                target=m.target,
                source=m.source if m.kind == "bind" else f"{project}_{m.source}",
                type=m.kind,
                read_only=m.read_only,
                labels={STACK_LABEL: project} if m.kind == "volume" else None,
            )
            for m in definition.mounts
        ],
        "networks": [
            types.NetworkAttachmentConfig(target=network_name(project, net), aliases=[definition.key])
            for net in definition.networks
        ],
        "endpoint_spec": types.EndpointSpec(
            mode=definition.endpoint_mode,
            ports={p.published: (p.target, p.protocol, p.mode) for p in definition.ports} or None,
        ),
        "update_config": _policy(definition.update, types.UpdateConfig),
        "rollback_config": _policy(definition.rollback, types.RollbackConfig),
        "secrets": [
            types.SecretReference(secret_ids[ref.source][0], secret_ids[ref.source][1], filename=ref.target)
            for ref in definition.secrets
            if ref.source in secret_ids
        ],
        "configs": [
            types.ConfigReference(config_ids[ref.source][0], config_ids[ref.source][1], filename=ref.target)
            for ref in definition.configs
        ],
        "constraints": list(definition.constraints),
    }
    if definition.max_replicas_per_node:
        kwargs["maxreplicas"] = definition.max_replicas_per_node
    if definition.restart:
        restart = definition.restart
        kwargs["restart_policy"] = types.RestartPolicy(
            condition=restart.get("condition", "any"),
            delay=int(_seconds(restart.get("delay", 0)) * NANOSECONDS),
            max_attempts=int(restart.get("max_attempts", 0)),
        )
    if definition.limits or definition.reservations or definition.generic_resources:
        kwargs["resources"] = types.Resources(
            cpu_limit=definition.limits.get("nano_cpus"),
            mem_limit=definition.limits.get("memory_bytes"),
            cpu_reservation=definition.reservations.get("nano_cpus"),
            mem_reservation=definition.reservations.get("memory_bytes"),
            generic_resources=_generic_resources(definition.generic_resources),
        )
    if definition.healthcheck:
        check = definition.healthcheck
        kwargs["healthcheck"] = types.Healthcheck(
            test=["CMD", *check["test"][1:]] if check["test"][0] == "CMD" else check["test"],
            interval=int(check["interval"] * NANOSECONDS),
            timeout=int(check["timeout"] * NANOSECONDS),
            retries=check["retries"],
            start_period=int(check["start_period"] * NANOSECONDS),
        )
    if definition.log_driver:
        kwargs["log_driver"] = definition.log_driver
        kwargs["log_driver_options"] = dict(definition.log_options)
    if definition.stop_grace_period is not None:
        kwargs["stop_grace_period"] = int(definition.stop_grace_period * NANOSECONDS)
    return kwargs


def _generic_resources(resources: tuple[tuple[str, int], ...]) -> list[dict[str, Any]] | None:
    """The engine's GenericResources list (counted resources, e.g. GPUs a node advertises)."""
    return [{"DiscreteResourceSpec": {"Kind": kind, "Value": value}} for kind, value in resources] or None


def _seconds(value: Any) -> float:
    from flashfit_ops.config.model import parse_duration

    return parse_duration(value)
