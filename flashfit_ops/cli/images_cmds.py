"""`flashfit build`, `flashfit images bootstrap` and `flashfit images prune`."""

from __future__ import annotations

from typing import Annotated

import typer

from flashfit_ops import console
from flashfit_ops.cli.common import (
    App,
    ConfigOption,
    DryRunOption,
    EnvOption,
    JsonOption,
    LockWaitOption,
    guarded,
)

images_app = typer.Typer(help="Base images without a registry, and pruning old backend images.", no_args_is_help=True)


@guarded
def bootstrap(
    app: App,
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild images that already exist.")] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Just this image: base, proxy, prometheus or alertmanager (repeatable).")
    ] = None,
    pull: Annotated[bool, typer.Option("--pull/--no-pull", help="Try a registry before building.")] = True,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", envvar="FLASHFIT_DEBIAN_MIRROR", help="Debian mirror (http).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Make flashfit/debian-python:bookworm and flashfit/nginx:bookworm from Debian packages
    (debootstrap + docker import), unless they exist locally or can be pulled."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.images.bootstrap import bootstrap as run_bootstrap

    loaded = app.config
    client = connect()
    outcomes = run_bootstrap(client, loaded.base_dir, which=only, force=force, pull=pull, mirror=mirror)
    if json_output:
        console.emit_json({"images": [o.to_dict() for o in outcomes]})


@guarded
def build(
    app: App,
    version: Annotated[
        str | None,
        typer.Option("--version", help="Image tag; default: git short SHA (+ -dirty-<hash>).", show_default=False),
    ] = None,
    gpu: Annotated[
        bool | None,
        typer.Option("--gpu/--cpu", help="GPU variant (torch's CUDA build); default: GPU when resources.gpus is set.", show_default=False),
    ] = None,
    config: ConfigOption = None,
    env: EnvOption = None,
    push: Annotated[bool, typer.Option("--push", help="Push it to registry.server; deploys then pin its digest.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Build the backend image <server.image>:<version> from a wheelhouse (no PyPI in the build);
    with server.build.models: baked, the checkpoints of volumes.models go in too."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.images import registry
    from flashfit_ops.images.build import baked_models, build_image

    loaded = app.config
    if push:
        registry.require(loaded)
    baked_models(loaded)  # a missing or incomplete models folder is exit 2 even without an engine
    client = connect()
    result = build_image(client, loaded, version=version, gpu=gpu).to_dict()
    if push:
        with console.status(f"pushing to {registry.image_repository(loaded)}"):
            result["pushed"] = registry.push(client, loaded, result["version"])
        console.success(f"pushed {result['pushed']}")
    if json_output:
        console.emit_json(result)


@guarded
def prune(
    app: App,
    keep: Annotated[
        int | None,
        typer.Option("--keep", min=1, help="Versions to keep (default: deploy.keep_versions).", show_default=False),
    ] = None,
    config: ConfigOption = None,
    env: EnvOption = None,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    remote: Annotated[bool, typer.Option("--remote", help="Prune the registry's tags instead (where it allows deletes).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove old <server.image> tags. Kept: tags any container or Swarm service uses, the last
    --keep successful deploys (rollback targets) and the --keep newest builds."""
    from flashfit_ops.images.prune import prune_images, prune_remote_images

    loaded = app.config
    prune_with = prune_remote_images if remote else prune_images
    result = prune_with(loaded, keep=keep, dry_run=dry_run, lock_wait=lock_wait)
    if json_output:
        console.emit_json({"dry_run": dry_run, "remote": remote, **result.to_dict()})
        return
    image = loaded.server.image
    if remote:
        from flashfit_ops.images.registry import image_repository

        image = image_repository(loaded)
    for version, reason in result.plan.keep.items():
        console.print_data(f"keep    {image}:{version}  ({reason})")
    for tag in result.plan.remove:
        if dry_run:
            console.print_data(f"remove  {image}:{tag.version}  (created {tag.created[:19]})")
        elif tag.version in result.removed:
            console.print_data(f"removed {image}:{tag.version}")
        else:
            console.warn(f"kept {image}:{tag.version}: the engine refused: {result.refused[tag.version]}")
    verb = "would remove" if dry_run else "removed"
    count = len(result.plan.remove) if dry_run else len(result.removed)
    console.success(f"{verb} {count} of {len(result.plan.keep) + len(result.plan.remove)} {image} tags")


@guarded
def push(
    app: App,
    version: Annotated[str, typer.Option("--version", help="The tag of <server.image> to push.")],
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Push an image built earlier (<server.image>:<version>) to registry.server."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.images import registry
    from flashfit_ops.images.build import check_version

    loaded = app.config
    registry.require(loaded)
    with console.status(f"pushing to {registry.image_repository(loaded)}"):
        pushed = registry.push(connect(), loaded, check_version(version))
    if json_output:
        console.emit_json({"version": version, "pushed": pushed})
        return
    console.success(f"pushed {pushed}")


@guarded
def remote(app: App, config: ConfigOption = None, env: EnvOption = None, json_output: JsonOption = False) -> None:
    """List the backend's tags in registry.server, with digest and build time (registry API v2)."""
    from flashfit_ops.images.registry import image_repository, remote_tags

    loaded = app.config
    tags = sorted(remote_tags(loaded), key=lambda t: t.created, reverse=True)
    if json_output:
        console.emit_json({"repository": image_repository(loaded), "tags": [
            {"version": t.version, "digest": t.image_id, "created": t.created} for t in tags]})  # fmt: skip
        return
    for tag in tags:
        console.print_data(f"{tag.version:<24} {tag.image_id[:19]}  {tag.created[:19]}")
    console.success(f"{len(tags)} tags in {image_repository(loaded)}")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    images_app.command("bootstrap")(bootstrap)
    images_app.command("prune")(prune)
    images_app.command("push")(push)
    images_app.command("remote")(remote)
    app.add_typer(images_app, name="images")
