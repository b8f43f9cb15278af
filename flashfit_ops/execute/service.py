"""What the CLI calls: deploy, rollback, status, history, logs, lock. Each runs the one flow:
connect -> lock -> observe -> plan -> execute -> history. The CLI never talks to Docker. Results
are returned as data for the CLI to render; progress on the way (building, waiting for the lock,
a stale lock taken over, a repair first, each step) goes to flashfit_ops.console, the one place
that prints, which keeps stdout clean in --json mode."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flashfit_ops import console
from flashfit_ops.config.model import Config
from flashfit_ops.engine.protocol import Engine, EngineClient
from flashfit_ops.errors import OperationFailed, Unavailable, UsageError
from flashfit_ops.execute.executor import Executor
from flashfit_ops.execute.observe import observe, probe_container, with_health
from flashfit_ops.monitoring import targets as scrape_targets
from flashfit_ops.monitoring.runner import monitoring_for_deploy, monitoring_status
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import (
    GPU_NODE_LABEL,
    Target,
    gpu_problem,
    image_ref,
    swarm_gpu_problem,
    valid_version,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.repair import plan_repair
from flashfit_ops.plan.rollback import plan_restart, retained_versions
from flashfit_ops.plan.steps import Step
from flashfit_ops.runs import history as hist
from flashfit_ops.runs.lock import force_release, lock_status, pid_alive
from flashfit_ops.runs.recorded import (  # noqa: F401  (acquire_lock, sigterm_as_interrupt: imported from here too)
    acquire_lock,
    deploy_lock,
    history_path,
    lock_path,
    new_deploy_id,
    recorded_run,
    sigterm_as_interrupt,
)

if TYPE_CHECKING:  # pragma: no cover
    from flashfit_ops.execute.backend import DockerBackend


def public_url(config: Config) -> str:
    if config.tls.enabled:
        host = config.tls.domains[0] if config.tls.domains else "127.0.0.1"
        port = "" if config.ports.https == 443 else f":{config.ports.https}"
        return f"https://{host}{port}/"
    port = "" if config.ports.http == 80 else f":{config.ports.http}"
    return f"http://127.0.0.1{port}/"


def _backend() -> DockerBackend:
    return _engine()[1]


def _engine() -> tuple[EngineClient, DockerBackend]:
    """The engine's client (for Swarm and image builds) and the deploy operations over it."""
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.execute.backend import DockerBackend

    client = connect()
    return client, DockerBackend(client)


# -- versions and images -------------------------------------------------------------------------
def default_version(config: Config) -> str:
    """The version `flashfit build` would give the current source tree."""
    try:
        from flashfit_ops.images.build import source_folder, source_state, version_from_state
    except ImportError:  # pragma: no cover - images module absent
        raise UsageError("no version given", hint="pass --version") from None
    state = source_state(source_folder(config))
    if state is None:
        raise UsageError("no version given and the source folder is not a git checkout", hint="pass --version")
    return version_from_state(state)


def ensure_image(backend: Engine, client: EngineClient, config: Config, version: str) -> bool:
    """Build the version when its image is missing. Returns True when it built."""
    if backend.image_exists(image_ref(config, version)):
        return False
    from flashfit_ops.images.build import build_image

    console.step(f"{image_ref(config, version)} does not exist: building it")
    build_image(client, config, version=version)
    return True


def require_gpus(backend: Engine, config: Config, version: str) -> None:
    """GPUs the engine cannot provide stop a deploy before its first step (exit 3), instead of a
    container that is created and then never starts; so does a CPU-only image of the version."""
    if config.resources.gpus is None:
        return
    from flashfit_ops.images.build import LABEL_VARIANT

    labels = backend.image_labels(image_ref(config, version))
    if labels is not None and labels.get(LABEL_VARIANT, "cpu") != "gpu":
        raise UsageError(
            f"{image_ref(config, version)} is the CPU image (torch without CUDA) but resources.gpus is set",
            hint=f"flashfit build --gpu --version {version}",
        )
    if config.target == "swarm":
        problem = swarm_gpu_problem(config, backend.gpu_nodes(GPU_NODE_LABEL))
        hint = f"label the GPU nodes: docker node update --label-add {GPU_NODE_LABEL}=true NODE"
    else:
        problem = gpu_problem(config, backend.gpu_support())
        hint = "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`, or remove resources.gpus"
    if problem:
        raise Unavailable(problem, hint=hint)


def require_models(backend: Engine, config: Config, version: str) -> None:
    """With server.build.models: baked nothing mounts the models, so an image built without them
    would start replicas that never turn ready: refused before the first step (exit 2). A baked
    image deployed with mounted models is fine: the mount shows the host's copy instead."""
    from flashfit_ops.labels import LABEL_MODELS
    from flashfit_ops.service_spec import models_baked

    if not models_baked(config):
        return
    labels = backend.image_labels(image_ref(config, version))
    if labels is not None and labels.get(LABEL_MODELS) != "baked":
        raise UsageError(
            f"{image_ref(config, version)} has no models inside, but server.build.models is baked "
            "(nothing mounts volumes.models)",
            hint=f"flashfit build --version {version} bakes them in (server.build.models: baked); then deploy again",
        )


# -- the shared flow -------------------------------------------------------------------------------
@dataclass
class Run:
    kind: str  # deploy | rollback | repair
    strategy: str
    version: str | None
    replicas: int | None = None
    message: str = ""


def _execute(
    config: Config,
    backend: Engine,
    run: Run,
    make_plan: Callable[[Observed], list[Step]],
    *,
    executor_factory: Callable[..., Executor] | None = None,
) -> dict[str, Any]:
    """Under the lock, recorded: observe, plan, execute. Raises after rolling back on failure."""
    from flashfit_ops.config.secrets import load_secrets

    observed = with_health(backend, config, observe(backend, config))
    steps = with_keeper(config, observed, run.kind, make_plan(observed))
    from flashfit_ops.execute.lifecycle import LifecycleExecutor

    executor = (executor_factory or LifecycleExecutor)(backend, config, secrets=load_secrets(config))
    with recorded_run(
        config, run.kind, strategy=run.strategy, version=run.version, previous_version=observed.live_version,
        replicas=run.replicas, message=run.message,
    ) as record:  # fmt: skip
        try:
            execution = executor.run(steps)
        finally:
            with contextlib.suppress(OSError):
                scrape_targets.settle(config)  # drained containers stop being scrape targets
            record.rolled_back = executor.execution.rolled_back
            record.error = executor.execution.error
            record.warnings = list(executor.execution.warnings)
            record.details.update(
                ready_seconds=executor.execution.to_dict()["ready_seconds"], rolled_back=executor.execution.rolled_back
            )
    after = observe(backend, config, check_proxy_config=False)
    return {
        "result": "success",
        "kind": run.kind,
        "deploy_id": record.id,
        "strategy": run.strategy,
        "version": run.version,
        "previous_version": observed.live_version,
        "live": list(after.live_names),
        "live_color": after.live_color,
        "url": public_url(config),
        "duration_s": record.seconds(),
        "plan": [s.to_dict() for s in steps],
        "execution": execution.to_dict(),
    }


# Commands after which something serves: each ends by making sure the keeper runs.
KEEPS_SERVING = ("deploy", "rollback", "repair", "start")


def with_keeper(config: Config, observed: Observed, kind: str, steps: list[Step]) -> list[Step]:
    """`steps`, ending with the keeper's step where `kind` leaves something serving (also what
    dry runs print, so the plan shows it)."""
    if kind in KEEPS_SERVING and (steps or observed.keeper_state != "running"):
        return [*steps, *_keeper(config, observed, steps)]
    return steps


def keeper_preview(config: Config, observed: Observed, kind: str, steps: list[Step]) -> list[dict[str, Any]]:
    """For dry runs: the keeper step the command appends after its plan (kept apart from `plan`,
    which is the plan of the strategy or repair itself)."""
    return [s.to_dict() for s in with_keeper(config, observed, kind, steps)[len(steps) :]]


def _keeper(config: Config, observed: Observed, steps: list[Step]) -> list[Step]:
    """The keeper step, run from the image of the backend the plan leaves in slot 1."""
    from flashfit_ops.plan.keeper import keeper_step
    from flashfit_ops.plan.steps import EnsureProxy, StartContainer, SwitchUpstreams

    started = {s.spec.name: s.spec.image for s in steps if isinstance(s, StartContainer)}
    traffic = [s for s in steps if isinstance(s, (SwitchUpstreams, EnsureProxy)) and s.slots]
    first = traffic[-1].slots[0] if traffic else (observed.live_names or ("",))[0]
    container = observed.by_name(first)
    image = started.get(first) or (container.image if container is not None else None)
    if not config.deploy.keeper and observed.keeper_state != "missing":
        from flashfit_ops.plan.keeper import keeper_name
        from flashfit_ops.plan.steps import RemoveContainer

        return [RemoveContainer(keeper_name(config.project), reason="deploy.keeper: false")]
    return [*keeper_step(config, image, os.environ.get("DOCKER_HOST"))]


# -- commands ----------------------------------------------------------------------------------------
def deploy(
    config: Config,
    *,
    strategy: str | None = None,
    version: str | None = None,
    replicas: int | None = None,
    dry_run: bool = False,
    lock_wait: float | None = None,
    message: str = "",
) -> dict[str, Any]:
    strategy = strategy or config.deploy.strategy
    if strategy == "single":
        if replicas not in (None, 1):
            raise UsageError("the single strategy runs exactly one container", hint="use --strategy rolling or blue-green for replicas")
        replicas = 1
    replicas = replicas or config.replicas
    version = version or default_version(config)
    if not valid_version(version):
        raise UsageError(f"{version!r} is not a valid version (an image tag)", hint="letters, digits, '_', '.', '-'")
    client, backend = _engine()
    require_gpus(backend, config, version)
    require_models(backend, config, version)
    if config.target == "swarm":
        if dry_run:
            return _swarm_deploy(client, config, version, dry_run=True)
        with deploy_lock(config, lock_wait, message):
            if not config.registry.server:  # with a registry, nodes pull it by digest from there
                ensure_image(backend, client, config, version)
            run = Run("deploy", "swarm-rolling", version, replicas, message)
            return _swarm_recorded(config, client, run, lambda: _swarm_deploy(client, config, version, dry_run=False))
    if dry_run:
        observed = observe(backend, config)
        target = Target(version=version, deploy_id=new_deploy_id(), replicas=replicas)
        steps = plan_deploy(strategy, config, observed, target)
        return {
            "keeper": keeper_preview(config, observed, "deploy", steps),
            "result": "planned",
            "dry_run": True,
            "strategy": strategy,
            "version": version,
            "replicas": replicas,
            "image": image_ref(config, version),
            "image_exists": backend.image_exists(image_ref(config, version)),
            "previous_version": observed.live_version,
            "plan": [s.to_dict() for s in steps],
        }
    with deploy_lock(config, lock_wait, message):
        repair_locked(config, backend, spares=False)  # service first: a killed proxy or dead backend is restored now
        ensure_image(backend, client, config, version)
        monitoring = monitoring_for_deploy(config, backend, client)  # long-lived: kept unless changed
        run = Run("deploy", strategy, version, replicas, message)

        def make_plan(observed: Observed) -> list[Step]:
            return plan_deploy(strategy, config, observed, Target(version, new_deploy_id(), replicas))

        return {**_execute(config, backend, run, make_plan), **monitoring}


def _swarm_deploy(client: EngineClient, config: Config, version: str, dry_run: bool) -> dict[str, Any]:
    from flashfit_ops.swarm import deploy as swarm

    return swarm.deploy(client, config, version, dry_run=dry_run, on_step=lambda s: console.step(s.describe()))


def _swarm_recorded(config: Config, client: EngineClient, run: Run, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A Swarm deploy or rollback, with its start and finish in the history like a local one."""
    from flashfit_ops.swarm import deploy as swarm

    previous = swarm.live_version(client, config)
    with recorded_run(
        config, run.kind, strategy=run.strategy, version=run.version, previous_version=previous, replicas=run.replicas, message=run.message
    ) as record:
        result = action()
    live = [f"{config.project}_backend ({config.replicas} tasks)"]
    return {**result, "id": record.id, "strategy": run.strategy, "url": public_url(config), "live": live}


def rollback_options(config: Config, backend: Engine | None = None) -> dict[str, Any]:
    """Versions a rollback can go to: retained containers (fast) and local images of successful
    deploys (at most deploy.keep_versions), the live one excluded."""
    backend = backend or _backend()
    observed = observe(backend, config, check_proxy_config=False)
    fast = retained_versions(config, observed)
    live = observed.live_version
    out = [{"version": r.version, "how": "restart retained containers", "containers": list(r.containers)} for r in fast]
    seen = {r.version for r in fast} | {live}
    tags = set(backend.image_tags(config.server.image))
    for version in hist.successful_versions(history_path(config)):
        if len(out) >= config.deploy.keep_versions:
            break
        if version in seen or version not in tags:
            continue
        seen.add(version)
        out.append({"version": version, "how": "new containers from the image", "containers": []})
    return {"live_version": live, "versions": out[: config.deploy.keep_versions]}


def replicas_of(config: Config, version: str) -> int | None:
    """How many replicas `version` ran with when it was last deployed successfully."""
    for entry in reversed(hist.entries(history_path(config))):
        if entry.get("version") == version and entry.get("result") == "success" and isinstance(entry.get("replicas"), int):
            return entry["replicas"]
    return None


def rollback(
    config: Config,
    version: str | None,
    *,
    replicas: int | None = None,
    strategy: str | None = None,
    dry_run: bool = False,
    lock_wait: float | None = None,
    message: str = "",
) -> dict[str, Any]:
    client, backend = _engine()
    if config.target == "swarm":
        return _swarm_rollback(config, client, backend, version, dry_run=dry_run, lock_wait=lock_wait, message=message)
    options = rollback_options(config, backend)
    if version is None:
        return {"result": "listed", **options}
    if version == options["live_version"]:
        raise UsageError(f"version {version} is already live")
    strategy = strategy or config.deploy.strategy
    if strategy == "single" and replicas not in (None, 1):
        raise UsageError("the single strategy runs exactly one container", hint="use --strategy rolling or blue-green for replicas")
    asked = replicas
    replicas = 1 if strategy == "single" else (replicas or replicas_of(config, version) or config.replicas)

    def make_plan(observed: Observed) -> list[Step]:
        retained = next((r for r in retained_versions(config, observed) if r.version == version), None)
        if retained is not None and asked in (None, len(retained.containers)):
            return plan_restart(config, observed, version)
        if not backend.image_exists(image_ref(config, version)):
            known = ", ".join(v["version"] for v in options["versions"]) or "none"
            raise UsageError(f"version {version} is not retained here (retained: {known})", hint="`flashfit rollback` lists them")
        require_models(backend, config, version)  # new containers of it mount no models when baked
        return plan_deploy(strategy, config, observed, Target(version, new_deploy_id(), replicas))

    if dry_run:
        observed = observe(backend, config)
        steps = make_plan(observed)
        keeper = keeper_preview(config, observed, "rollback", steps)
        return {"result": "planned", "dry_run": True, "version": version, "replicas": replicas, "plan": [s.to_dict() for s in steps], "keeper": keeper}
    with deploy_lock(config, lock_wait, message or f"rollback to {version}"):
        repair_locked(config, backend, spares=False)
        return _execute(config, backend, Run("rollback", strategy, version, replicas, message), make_plan)


def _swarm_rollback(
    config: Config, client: EngineClient, backend: Engine, version: str | None, *, dry_run: bool, lock_wait: float | None, message: str
) -> dict[str, Any]:
    from flashfit_ops.swarm import deploy as swarm

    options = swarm.rollback_options(client, config, hist.successful_versions(history_path(config)))
    if version is None:
        return {"result": "listed", **options}
    if version == options["live_version"]:
        raise UsageError(f"version {version} is already live")
    if not config.registry.server and not backend.image_exists(image_ref(config, version)):
        raise UsageError(f"there is no image for version {version}", hint="`flashfit rollback` lists the versions")
    if dry_run:
        return _swarm_deploy(client, config, version, dry_run=True)
    with deploy_lock(config, lock_wait, message or f"rollback to {version}"):
        run = Run("rollback", "swarm-rolling", version, config.replicas, message)
        on_step = lambda step: console.step(step.describe())  # noqa: E731
        return _swarm_recorded(config, client, run, lambda: swarm.rollback(client, config, version, on_step=on_step))


def _history_disagreements(config: Config, routed_version: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The last history entry, and where the history disagrees with what nginx routes to."""
    entries = hist.entries(history_path(config))
    last = hist.last_service_entry(history_path(config))
    found: list[str] = []
    if last is not None and last.get("result") == "interrupted":
        found.append(f"the last {last.get('kind', 'deploy')} ({last.get('version') or '-'}, id {last.get('id')}) was interrupted")
    recorded = next((e.get("version") for e in reversed(entries) if e.get("result") == "success" and e.get("version")), None)
    if recorded and routed_version and recorded != routed_version:
        found.append(f"the history's last successful version is {recorded} but nginx routes to {routed_version}")
    return last, found


def status(config: Config) -> dict[str, Any]:
    """Read-only: what nginx routes to (the slot links), each container's health, the history,
    and where they disagree, with the repair plan that `flashfit repair` would carry out."""
    client, backend = _engine()
    if config.target == "swarm":
        from flashfit_ops.swarm import deploy as swarm

        return swarm.status(client, config)
    observed = observe(backend, config)
    running = [c for c in observed.containers if c.running]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(running)))) as pool:
        probes = dict(zip([c.name for c in running], pool.map(lambda c: probe_container(backend, config, c.name), running)))
    healthy = _apply_probes(observed, probes)
    repair = plan_repair(config, healthy)
    # What nginx routes to: the slot links (the record of the last finished switch may lag).
    routed = tuple(dict.fromkeys(observed.proxy.config or observed.proxy.applied))
    routed_versions = {c.version for n in routed if (c := observed.by_name(n)) is not None}
    routed_version = routed_versions.pop() if len(routed_versions) == 1 else ("mixed" if routed_versions else None)
    routed_colors = {c.color for n in routed if (c := observed.by_name(n)) is not None}
    last, history_findings = _history_disagreements(config, routed_version)
    from flashfit_ops.plan.spare import spares_of

    spares = spares_of(observed, routed)  # warm spares: out of rotation, behind the standby slots
    containers = []
    for c in observed.containers:
        entry = {
            "name": c.name,
            "color": c.color,
            "version": c.version,
            "replica": c.replica,
            "state": c.state,
            "live": c.name in routed,
            "spare": c.name in spares,
            "deploy_id": c.deploy_id,
        }
        entry.update(probes.get(c.name, {"ready": False, "alive": False}))
        containers.append(entry)
    live_ready = [c for c in containers if c["live"] and c.get("ready")]
    serving = observed.proxy.running and bool(live_ready)
    disagreements = [*repair.findings, *history_findings]
    if routed and config.deploy.keeper and observed.keeper_state != "running" and not stopped_on_purpose(config):
        disagreements.append(f"the keeper is {observed.keeper_state}: a killed proxy or backend comes back only with `flashfit repair`")
    hint = None
    if stopped_on_purpose(config):
        hint = "stopped with `flashfit stop`: `flashfit start` brings the last live version back"
    elif repair.steps or disagreements:
        hint = "`flashfit repair` restores service from what is healthy (`flashfit repair --dry-run` shows its plan)"
    elif not serving:
        hint = "nothing healthy is left to restore: `flashfit deploy` (or `flashfit start` after `flashfit stop`)"
    lock = lock_status(lock_path(config))
    if repair.steps and lock.held:
        hint = "a deploy holds the lock and may still be working: wait for it, then `flashfit repair` if needed"
    return {
        "project": config.project,
        "serving": serving,
        "url": public_url(config),
        "live_color": routed_colors.pop() if len(routed_colors) == 1 else ("mixed" if routed_colors else None),
        "live_version": routed_version,
        "recorded_version": observed.live_version,
        "replicas": {"live": len(routed), "ready": len(live_ready)},
        "proxy": {
            "name": observed.proxy.name,
            "state": observed.proxy.state,
            # What each replica slot links to now, and the slots of the last completed switch.
            "slots": {f"slot-{n}": name for n, name in enumerate(observed.proxy.config, start=1)},
            "upstreams": list(observed.proxy.applied),
            "config_consistent": observed.proxy.consistent,
        },
        "containers": containers,
        "keeper": observed.keeper_state,
        "lock": lock.to_dict(),
        "consistent": not disagreements and not repair.steps,
        "disagreements": disagreements,
        "leftovers": [s.describe() for s in repair.steps],
        "hint": hint,
        "last_deploy": last,
        **monitoring_status(config, set(routed)),
    }


def _apply_probes(observed: Observed, probes: dict[str, dict[str, Any]]) -> Observed:
    import dataclasses

    from flashfit_ops.execute.observe import health_of

    containers = tuple(dataclasses.replace(c, health=health_of(probes[c.name])) if c.name in probes else c for c in observed.containers)
    return dataclasses.replace(observed, containers=containers)


def repair(config: Config, *, dry_run: bool = False, lock_wait: float | None = None) -> dict[str, Any]:
    """Restore service from what is healthy, then finish what an interrupted deploy left. Never
    reverts a switch that happened. Also the first thing every deploy, rollback and start does."""
    backend = _backend()
    if config.target == "swarm":
        raise UsageError("repair is for target: local", hint="Swarm restarts failed tasks itself")
    if dry_run:
        observed = with_health(backend, config, observe(backend, config))
        planned = plan_repair(config, observed, restart_stopped=not stopped_on_purpose(config))
        keeper = keeper_preview(config, observed, "repair", list(planned.steps)) if planned.steps else []
        return {"result": "planned", "dry_run": True, "kind": "repair", **planned.to_dict(), "keeper": keeper}
    with deploy_lock(config, lock_wait, "repair"):
        return repair_locked(config, backend) or {"result": "nothing to repair", "kind": "repair", "plan": [], "findings": []}


def repair_locked(config: Config, backend: Engine, *, spares: bool = True) -> dict[str, Any] | None:
    """Under the caller's lock: carry out the repair plan when there is one (recorded in the
    history as a `repair`); None when everything is consistent. `spares`: False before a deploy
    or rollback, whose plan makes the new version's spares (no spare of the old one is started)."""
    observed = with_health(backend, config, observe(backend, config))
    on_purpose = stopped_on_purpose(config)
    planned = plan_repair(config, observed, restart_stopped=not on_purpose, spares=spares)
    from flashfit_ops.plan.keeper import engine_socket

    keeper_down = (
        config.deploy.keeper
        and observed.keeper_state != "running"
        and not on_purpose
        and any(c.running for c in observed.live)
        and engine_socket(os.environ.get("DOCKER_HOST")) is not None
    )
    if not planned.steps and not keeper_down:
        return None
    if planned.steps:
        console.warn("repairing first: " + "; ".join(planned.findings or ("leftovers of an interrupted deploy",)))
    version = planned.view.live_version
    run = Run("repair", "repair", version if version != "mixed" else None, message="; ".join(planned.findings)[:500])
    restart = not stopped_on_purpose(config)
    result = _execute(config, backend, run, lambda o: list(plan_repair(config, o, restart_stopped=restart, spares=spares).steps))
    result["findings"] = list(planned.findings)
    return result


def stopped_on_purpose(config: Config) -> bool:
    """The last recorded command was a successful `flashfit stop`: stopped containers stay so."""
    last = hist.last_service_entry(history_path(config))
    return last is not None and last.get("kind") == "stop" and last.get("result") == "success"


def lifecycle(
    config: Config, kind: str, *, dry_run: bool = False, lock_wait: float | None = None, volumes: bool = False, message: str = ""
) -> dict[str, Any]:
    """`flashfit stop | start | down`: a plan (data), carried out under the deploy lock and
    recorded in the history like a deploy."""
    from flashfit_ops.proxy_files import slot_links
    from flashfit_ops.plan.common import sockets_dir
    from flashfit_ops.plan.lifecycle import plan_down, plan_start, plan_stop

    backend = _backend()
    if config.target == "swarm":
        raise UsageError(f"`flashfit {kind}` is for target: local", hint="use `docker service scale` / `docker stack rm` on a swarm")

    def make_plan(observed: Observed) -> list[Step]:
        if kind == "stop":
            return plan_stop(config, observed)
        if kind == "start":
            steps = plan_start(config, observed)
            if not steps and not (observed.proxy.running and any(c.running for c in observed.live)):
                raise UsageError("nothing to start: no container of a live version is left", hint="`flashfit deploy`")
            return steps
        return plan_down(config, observed, volumes=volumes, slot_count=max(slot_links(sockets_dir(config)), default=0))

    def version_of(observed: Observed) -> str | None:
        version = observed.live_version
        return None if version == "mixed" else version

    if dry_run:
        observed = with_health(backend, config, observe(backend, config))
        steps = make_plan(observed)
        keeper = keeper_preview(config, observed, kind, steps)
        return {"result": "planned", "dry_run": True, "kind": kind, "version": version_of(observed), "plan": [s.to_dict() for s in steps], "keeper": keeper}
    with deploy_lock(config, lock_wait, message or kind):
        observed = observe(backend, config)
        run = Run(kind, kind, version_of(observed), None, message)
        return _execute(config, backend, run, make_plan)


def history(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    entries = hist.entries(history_path(config))
    return entries[-limit:] if limit else entries


def logs(
    config: Config,
    *,
    follow: bool = False,
    since: float | None = None,
    tail: int | None = None,
    proxy: bool = False,
    all_containers: bool = False,
) -> Iterator[tuple[str, str]]:
    """(container, line) for the live backends (or every container of the project)."""
    backend = _backend()
    observed = observe(backend, config, check_proxy_config=False)
    names = [c.name for c in observed.containers if all_containers or c.name in set(observed.live_names)]
    if proxy or all_containers:
        if observed.proxy.exists:
            names.append(observed.proxy.name)
    if not names:
        raise OperationFailed("nothing is deployed", hint="`flashfit deploy` first")
    since_arg = datetime.fromtimestamp(time.time() - since) if since else None
    tail_arg = tail if tail is not None else "all"
    if len(names) == 1:
        for raw in backend.stream_logs(names[0], follow=follow, since=since_arg, tail=tail_arg):
            yield from ((names[0], line) for line in _lines(raw))
        return
    import queue

    lines: "queue.Queue[tuple[str, str] | None]" = queue.Queue(maxsize=10000)
    done = threading.Event()

    def pump(name: str) -> None:
        try:
            for raw in backend.stream_logs(name, follow=follow, since=since_arg, tail=tail_arg):
                for line in _lines(raw):
                    lines.put((name, line))
                if done.is_set():
                    break
        finally:
            lines.put(None)

    threads = [threading.Thread(target=pump, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    finished = 0
    try:
        while finished < len(threads):
            item = lines.get()
            if item is None:
                finished += 1
                continue
            yield item
    finally:
        done.set()


def _lines(raw: bytes) -> list[str]:
    return [line for line in raw.decode("utf-8", "replace").splitlines() if line]


def lock_info(config: Config) -> dict[str, Any]:
    status_ = lock_status(lock_path(config))
    out = status_.to_dict()
    if status_.info and status_.info.host == socket.gethostname() and status_.held:
        out["owner_alive"] = pid_alive(status_.info.pid)
    return out


def lock_release(config: Config, *, force: bool = False) -> dict[str, Any]:
    status_ = lock_status(lock_path(config))
    if status_.held and not force:
        owner = status_.info.describe() if status_.info else "another process"
        raise UsageError(
            f"the lock is held by a running deploy: {owner}",
            hint="releasing it lets a second deploy run at the same time; pass --force if that deploy is stuck",
        )
    before = force_release(lock_path(config))
    return {"released": before.info is not None or before.held, "was": before.to_dict()}

