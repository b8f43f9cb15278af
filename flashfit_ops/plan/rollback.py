"""Rollback to a retained version. When stopped containers of that version are still there (a
blue-green deploy keeps the previous color), they are started again, gated, and take the traffic:
no image pull, no new container. Otherwise the version is deployed again from its image with the
configured strategy (the caller checks the image exists). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from flashfit_ops.config.model import Config
from flashfit_ops.plan import spare
from flashfit_ops.plan.common import Target, base_steps, cutover, kept_for_rollback, retained_generations, retention_cleanup
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.repair import leftovers
from flashfit_ops.plan.steps import RemoveContainer, RestartContainer, Step


@dataclass(frozen=True)
class RetainedVersion:
    version: str
    containers: tuple[str, ...]  # stopped containers that can be started again; () = image only
    deploy_id: str = ""

    @property
    def fast(self) -> bool:
        return bool(self.containers)


def retained_versions(config: Config, observed: Observed) -> list[RetainedVersion]:
    """Versions kept as stopped containers (fast rollback), newest first; the live one excluded."""
    _, view = leftovers(config, observed)
    live = view.live_version
    out: list[RetainedVersion] = []
    seen: set[str] = set()
    for generation in retained_generations(view):
        version = generation[0].version
        if version == live or version in seen:
            continue
        seen.add(version)
        out.append(RetainedVersion(version, tuple(c.name for c in generation), generation[0].deploy_id))
    return out


def plan_restart(config: Config, observed: Observed, version: str) -> list[Step]:
    """Start the retained containers of `version` again and switch to them; the current live
    containers stay running through the monitor window, then are drained, stopped and kept (so
    this rollback can itself be rolled back)."""
    steps, view = leftovers(config, observed)
    generation = None
    for candidate in retained_generations(view):
        if candidate[0].version == version:
            generation = candidate
            break
    if generation is None:
        raise ValueError(f"no retained containers of version {version}")
    steps += base_steps(config, view)
    names = tuple(c.name for c in generation)
    old = view.live_names
    steps += [RestartContainer(name) for name in names]
    steps += cutover(config, view.proxy, names, old)
    keep = kept_for_rollback(config, view, old, version) | set(names)
    steps += retention_cleanup(view, keep=keep)
    steps += [RemoveContainer(name, reason="replaced") for name in old if name not in keep]
    target = Target(version=version, deploy_id=generation[0].deploy_id, replicas=len(names))
    steps += spare.after_deploy(config, view, target, generation[0].color, names)
    return steps
