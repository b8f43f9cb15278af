"""`flashfit images prune`: drop old backend image tags, keeping everything a deploy or a rollback
may still need. Deciding is a pure function of what the engine and the history say (tags.py,
unit-tested); this module only gathers those facts and removes tags.

Kept, with the reason shown:
- a tag whose image a container uses (running, or stopped and retained for a fast rollback), or
  that a Swarm service runs or would roll back to;
- the newest `keep` successful deploys in the history (the versions `flashfit rollback` offers);
- the newest `keep` images by creation time (a build made for the next deploy is not lost).
Removing a tag lets the engine drop the image's unshared layers; a tag still in use is refused by
the engine (409) and reported, never forced."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flashfit_ops.engine.protocol import EngineClient
from flashfit_ops.images.bootstrap import split_reference
from flashfit_ops.images.tags import ImageTag, PrunePlan, PruneResult, plan_prune

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

# -- engine -----------------------------------------------------------------------------------
def list_tags(client: EngineClient, repository: str) -> list[ImageTag]:
    """Every `repository:<version>` tag on the engine, one entry per tag."""
    found = []
    for image in client.images.list(name=repository):
        for reference in image.tags:
            repo, version = split_reference(reference)
            if repo == repository:
                found.append(ImageTag(version, image.id, image.attrs.get("Created", "")))
    return found


def usage(client: EngineClient, repository: str, project: str, swarm: bool) -> tuple[set[str], set[str]]:
    """Image ids any container on the engine uses (any project: the engine would refuse anyway),
    and the versions the project's Swarm services run or would roll back to."""
    used_ids = {c.attrs.get("Image", "") for c in client.containers.list(all=True, ignore_removed=True)}
    versions: set[str] = set()
    if swarm:
        from flashfit_ops.labels import LABEL_STACK_NAMESPACE as STACK_LABEL

        for service in client.services.list(filters={"label": f"{STACK_LABEL}={project}"}):
            for spec in (service.attrs.get("Spec"), service.attrs.get("PreviousSpec")):
                image = ((spec or {}).get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image") or "").split("@")[0]
                repo, version = split_reference(image)
                if repo == repository:
                    versions.add(version)
    return used_ids, versions


def remove_tags(client: EngineClient, repository: str, plan: PrunePlan) -> PruneResult:
    from flashfit_ops.engine.errors import APIError, NotFound, explanation

    result = PruneResult(plan)
    for tag in plan.remove:
        try:
            client.images.remove(f"{repository}:{tag.version}")
        except NotFound:
            result.removed.append(tag.version)  # gone already: the goal is met
        except APIError as error:
            result.refused[tag.version] = explanation(error)
        else:
            result.removed.append(tag.version)
    return result


def prune_images(config: Config, *, keep: int | None = None, dry_run: bool = False, lock_wait: float | None = None) -> PruneResult:
    """Under the deploy lock, so no deploy starts a version while its tag is being removed;
    recorded in the history (kind prune) like every command that changes something."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.runs import history as hist
    from flashfit_ops.runs.recorded import history_path, recorded_run

    client = connect()
    keep = keep or config.deploy.keep_versions
    repository = config.server.image

    def decide() -> PrunePlan:
        used_ids, used_versions = usage(client, repository, config.project, swarm=config.target == "swarm")
        deployed = hist.successful_versions(history_path(config))
        return plan_prune(list_tags(client, repository), used_ids=used_ids, used_versions=used_versions, deployed=deployed, keep=keep)

    if dry_run:
        return PruneResult(decide())
    with recorded_run(config, "prune", strategy="images", message="prune images", lock_wait=lock_wait) as run:
        result = remove_tags(client, repository, decide())
        run.details.update(removed=result.removed, refused=result.refused, keep=keep)
        run.warnings = [f"the engine refused to remove {v}: {why}" for v, why in result.refused.items()]
        return result


def prune_remote_images(config: Config, *, keep: int | None = None, dry_run: bool = False, lock_wait: float | None = None) -> PruneResult:
    """The same policy for the registry's tags: what Swarm services run or would roll back to, the
    rollback targets and the newest builds stay. Under the deploy lock, like the local prune."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.images.registry import image_repository, prune_remote, require
    from flashfit_ops.runs import history as hist
    from flashfit_ops.runs.recorded import history_path, recorded_run

    require(config)
    keep = keep or config.deploy.keep_versions
    swarm = config.target == "swarm"
    used = usage(connect(), image_repository(config), config.project, swarm=True)[1] if swarm else set()
    deployed = hist.successful_versions(history_path(config))
    if dry_run:
        return prune_remote(config, keep=keep, dry_run=True, used_versions=used, deployed=deployed)
    with recorded_run(config, "prune", strategy="remote images", message="prune remote images", lock_wait=lock_wait) as run:
        result = prune_remote(config, keep=keep, dry_run=False, used_versions=used, deployed=deployed)
        run.details.update(removed=result.removed, refused=result.refused, keep=keep)
        return result
