"""`flashfit build`: the backend image, built from a context assembled here, with no registry and
no PyPI inside the build.

The context (a temporary folder beside the wheelhouse, so wheels are hard-linked, not copied):
  Dockerfile          templates/docker/Dockerfile.j2, rendered
  .dockerignore       templates/docker/dockerignore.j2, rendered
  requirements.txt    the pinned server dependencies (see wheelhouse.py)
  wheelhouse/         one wheel per pin
  dist/               the flashfit wheel, built from server.build.context
  models/             with server.build.models: baked, the checkpoints of volumes.models
                      (checked complete first, hidden files left out; hard-linked too)

The Dockerfile installs the dependencies in their own stage from requirements.txt + wheelhouse/
only, so a code-only change rebuilds just the layers after `COPY dist/`. Baked models are copied
after the dependencies and before the code: a code change neither rebuilds nor re-pushes them.

The GPU variant (`--gpu`, or by default when resources.gpus is set) is the same Dockerfile on the
same Debian base with the GPU wheelhouse (torch's CUDA build and its nvidia-* library wheels), and
the same tag: the variant is the label io.flashfit.variant, which a GPU deploy checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from flashfit_ops import console
from flashfit_ops.config.model import Config
from flashfit_ops.engine.errors import engine_errors
from flashfit_ops.errors import OperationFailed, Unavailable, UsageError
from flashfit_ops.images import bootstrap as boot
from flashfit_ops.images.wheelhouse import REQUIREMENTS, Wheelhouse, make_wheelhouse
from flashfit_ops.labels import (
    LABEL_BUILD_TIME,
    LABEL_GIT_SHA,
    LABEL_MODELS,
    LABEL_MODELS_DIGEST,
    LABEL_PROJECT,
    LABEL_VARIANT,
    LABEL_VERSION,
)
from flashfit_ops.service_spec import models_baked

if TYPE_CHECKING:  # pragma: no cover
    from flashfit_contract.modelfolder import ModelFolder
    from flashfit_ops.engine.protocol import EngineClient, Image

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# A build streams for minutes (torch is large); plain requests keep the client's short timeout.
BUILD_TIMEOUT = 3600


# ---------------------------------------------------------------------------------------------
# Versions


@dataclass(frozen=True)
class SourceState:
    sha: str  # full commit SHA
    short: str
    dirty_hash: str | None  # None when the tree matches the commit


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True)


def source_state(folder: Path) -> SourceState | None:
    """Commit and uncommitted changes of the git checkout holding `folder`; None outside git."""
    head = _git(folder, "rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    sha = head.stdout.decode().strip()
    short = _git(folder, "rev-parse", "--short=7", "HEAD").stdout.decode().strip() or sha[:7]
    digest = hashlib.sha256()
    diff = _git(folder, "diff", "HEAD", "--binary", "--no-ext-diff", "--", ".")
    digest.update(diff.stdout)
    untracked = _git(folder, "ls-files", "--others", "--exclude-standard", "-z", "--", ".")
    names = sorted(n for n in untracked.stdout.decode(errors="replace").split("\0") if n)
    for name in names:
        digest.update(b"\0untracked\0" + name.encode())
        path = folder / name
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            pass
    dirty = bool(diff.stdout) or bool(names)
    return SourceState(sha, short, digest.hexdigest()[:8] if dirty else None)


def version_from_state(state: SourceState) -> str:
    """abc1234 for a clean tree; abc1234-dirty-<8 hex of the diff> otherwise, so two different
    uncommitted states never share a tag."""
    return state.short if state.dirty_hash is None else f"{state.short}-dirty-{state.dirty_hash}"


def check_version(version: str) -> str:
    if not _TAG.match(version):
        raise UsageError(
            f"{version!r} is not a valid image tag",
            hint="use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')",
        )
    return version


# ---------------------------------------------------------------------------------------------
# The build context


@dataclass(frozen=True)
class ContextPlan:
    """What goes into the context: relative path -> text (rendered files) or a source file."""

    texts: dict[str, str]
    files: dict[str, Path]

    def listing(self) -> list[str]:
        return sorted([*self.texts, *self.files])


def wants_gpu(config: Config, gpu: bool | None = None) -> bool:
    """The variant to build: as asked, else GPU exactly when the deploy gives containers GPUs."""
    return config.resources.gpus is not None if gpu is None else gpu


MODELS_DIR = "models"


def plan_context(
    config: Config, wheelhouse: Wheelhouse, flashfit_wheel: Path, *, gpu: bool = False, models: ModelFolder | None = None
) -> ContextPlan:
    from flashfit_ops.render import render_template

    texts = {
        "Dockerfile": render_template("docker/Dockerfile.j2", config, gpu=gpu),
        ".dockerignore": render_template("docker/dockerignore.j2", config),
        REQUIREMENTS: wheelhouse.requirements.read_text(encoding="utf-8"),
    }
    files = {f"wheelhouse/{name}": wheelhouse.path / name for name in wheelhouse.wheels}
    files[f"dist/{flashfit_wheel.name}"] = flashfit_wheel
    if models is not None:
        files.update({f"{MODELS_DIR}/{item.relative}": item.path for item in models.files})
    return ContextPlan(texts, files)


def write_context(plan: ContextPlan, dest: Path) -> None:
    """Write the context; wheels and models are hard-linked where the filesystem allows, else
    copied. COPY keeps modes, and the server runs as uid 1000: a file others cannot read is
    copied with mode 0644 (never chmod-ed through its link), every folder gets 0755."""
    for relative, text in plan.texts.items():
        path = dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for relative, source in plan.files.items():
        path = dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, path)
        except OSError:
            shutil.copy2(source, path)
        if path.stat().st_mode & 0o444 != 0o444:
            path.unlink()
            shutil.copyfile(source, path)
            path.chmod(0o644)
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)


def baked_models(config: Config) -> ModelFolder | None:
    """With server.build.models: baked, the checked checkpoints of volumes.models; else None.
    Refused (exit 2) before anything is built: a missing or incomplete folder, or one that holds
    the env file."""
    if not models_baked(config):
        return None
    from flashfit_contract.modelfolder import ModelFolderError, validate_model_folder

    root = config.resolve_path(config.volumes.models)
    hint = (
        f"fill it with `flashfit-server models pull {root}` (or `models make-tiny {root}` for tests), "
        "or set server.build.models: mounted"
    )
    try:
        folder = validate_model_folder(root)
    except ModelFolderError as error:
        raise UsageError(f"volumes.models: cannot bake {root} into the image: {error}", hint=hint,
                         details={"field": "volumes.models", "path": str(root)}) from None
    env_file = config.resolve_path(config.secrets.env_file)
    if env_file.exists() and any(os.path.samefile(item.path, env_file) for item in folder.files):
        raise UsageError(
            f"volumes.models: {root} holds the env file {env_file}; secrets never go into an image",
            hint="move the env file (secrets.env_file) out of the models folder",
            details={"field": "volumes.models", "path": str(root)},
        )
    return folder


def source_folder(config: Config) -> Path:
    folder = config.resolve_path(config.server.build.context)
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file() or not re.search(r'(?m)^name\s*=\s*"flashfit"', pyproject.read_text(encoding="utf-8")):
        raise UsageError(
            f"server.build.context ({folder}) is not a flashfit source tree (no pyproject.toml of flashfit)",
            hint="point server.build.context at the flashfit checkout, relative to flashfit.yml",
        )
    return folder


def build_flashfit_wheel(source: Path, out: Path) -> Path:
    """The flashfit wheel (templates included: pyproject force-includes them). Without build
    isolation when hatchling is installed here; else pip fetches it into an isolated env."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")
    command.append(str(source))
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(out.glob("flashfit-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n  ".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise OperationFailed(f"building the flashfit wheel failed:\n  {tail}")
    return wheels[-1]


# ---------------------------------------------------------------------------------------------
# The base image


def ensure_base(client: EngineClient, config: Config) -> boot.ImageOutcome:
    """The FROM image: local, else pulled, else (for flashfit/debian-python:bookworm only) built
    from Debian packages right here, as `flashfit images bootstrap` would."""
    reference = config.server.build.base_image
    started = time.monotonic()
    image = boot.local_image(client, reference)
    if image is not None:
        return boot._outcome(reference, boot.FOUND, started, image)
    with console.status(f"pulling {reference}"):
        image, reason = boot.try_pull(client, reference)
    if image is not None:
        return boot._outcome(reference, boot.PULLED, started, image)
    recipe = boot.BOOTSTRAPPABLE.get(reference)
    if recipe is None:
        raise Unavailable(
            f"base image {reference} is not here and cannot be pulled ({reason})",
            hint=(
                "without a registry run `flashfit images bootstrap` and set "
                f"server.build.base_image: {boot.BASE.image} in flashfit.yml "
                "(or `docker load` the image)"
            ),
        )
    console.info(f"  [dim]{reference} cannot be pulled ({reason}); building it from Debian packages[/]")
    return boot.ensure_image(client, recipe, boot.cache_dir(config.base_dir), pull=False)


# ---------------------------------------------------------------------------------------------
# The build


@dataclass
class Step:
    number: int
    total: int
    instruction: str
    cached: bool = False
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"step": self.number, "instruction": self.instruction, "cached": self.cached, "seconds": self.seconds}


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class StepLog:
    """Follows the classic builder's stream: `Step n/m : INSTR`, output, ` ---> Using cache`."""

    def __init__(self, on_done: Any = None) -> None:
        self.steps: list[Step] = []
        self._started = time.monotonic()
        self._on_done = on_done
        self.loose: deque[str] = deque(maxlen=20)

    @property
    def current(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def feed(self, text: str) -> None:
        for raw in _ANSI.sub("", text).splitlines():
            line = raw.rstrip()
            if not line:
                continue
            match = _STEP.match(line)
            if match:
                self.close()
                self.steps.append(Step(int(match.group(1)), int(match.group(2)), match.group(3)))
                self._started = time.monotonic()
                continue
            if self.current is None:
                self.loose.append(line)
                continue
            if line.strip() == "---> Using cache":
                self.current.cached = True
            elif not line.lstrip().startswith("--->") and not line.startswith(("Removing intermediate", "Successfully")):
                self.current.output.append(line)
                if len(self.current.output) > 200:
                    del self.current.output[:100]

    def close(self) -> None:
        step = self.current
        if step is not None and step.seconds == 0.0:
            step.seconds = round(time.monotonic() - self._started, 2) or 0.01
            if self._on_done:
                self._on_done(step)

    def tail(self, lines: int = 15) -> list[str]:
        if self.current is None:
            return list(self.loose)[-lines:]
        return self.current.output[-lines:]


def models_steps(steps: Iterable[Step]) -> list[Step]:
    """The step that copies baked models (the layer a code change must reuse too)."""
    return [s for s in steps if s.instruction.startswith(f"COPY {MODELS_DIR}/")]


def dependency_steps(steps: Iterable[Step]) -> list[Step]:
    """The steps that install the pinned dependencies (the layer a code change must reuse)."""
    return [s for s in steps if "--find-links" in s.instruction and "requirements.txt" in s.instruction]


@dataclass
class BuildResult:
    image: str
    version: str
    image_id: str
    size_bytes: int
    seconds: float
    labels: dict[str, str]
    base: dict[str, Any]
    wheelhouse: dict[str, Any]
    steps: list[dict[str, Any]]
    dependencies_cached: bool
    # mode (mounted | baked); when baked: digest, files, size_bytes, cached (layer reused)
    models: dict[str, Any] = field(default_factory=lambda: {"mode": "mounted"})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_labels(config: Config, version: str, state: SourceState | None, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(UTC)
    return {
        LABEL_PROJECT: config.project,
        LABEL_VERSION: version,
        LABEL_GIT_SHA: state.sha if state else "unknown",
        LABEL_BUILD_TIME: now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def models_labels(models: ModelFolder | None, digest: str | None) -> dict[str, str]:
    """Whether the image carries its models, and which: deploy and doctor read these."""
    if models is None:
        return {LABEL_MODELS: "mounted"}
    return {LABEL_MODELS: "baked", LABEL_MODELS_DIGEST: digest or ""}


def variant_label(gpu: bool) -> dict[str, str]:
    """Which torch the image holds; a deploy with resources.gpus refuses the cpu one."""
    return {LABEL_VARIANT: "gpu" if gpu else "cpu"}


def _print_step(step: Step) -> None:
    mark = "[dim]cached[/]" if step.cached else f"{step.seconds:.1f} s"
    instruction = step.instruction if len(step.instruction) <= 90 else step.instruction[:87] + "..."
    console.info(f"  [dim]{step.number:>2}/{step.total}[/] {console_escape(instruction)}  {mark}")


def console_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run_build(client: EngineClient, context: Path, tag: str, labels: dict[str, str]) -> tuple[str, StepLog]:
    """Stream a classic-builder build of `context`; returns (image id, steps). Errors name the step."""
    log = StepLog(on_done=_print_step)
    image_id = None
    previous = client.api.timeout
    client.api.timeout = BUILD_TIMEOUT
    try:
        with engine_errors(f"the build of {tag} failed"), console.status(f"building {tag}") as live:
            stream = client.api.build(
                path=str(context),
                tag=tag,
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "stream" in chunk:
                    log.feed(chunk["stream"])
                    step = log.current
                    if step is not None:
                        last = step.output[-1] if step.output else ""
                        live.update(f"step {step.number}/{step.total} {step.instruction[:60]}  {last[:60]}")
                elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                elif "error" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    log.close()
                    _raise_step_failure(log, chunk["error"], detail.get("code"))
    finally:
        client.api.timeout = previous
    log.close()
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id, log


def _raise_step_failure(log: StepLog, message: str, code: Any) -> None:
    step = log.current
    where = f"step {step.number}/{step.total} ({step.instruction[:100]})" if step else "the build"
    tail = log.tail()
    body = "\n  ".join(tail) if tail else ""
    raise OperationFailed(
        f"{where} failed: {message.strip()}" + (f"\n  {body}" if body else ""),
        hint="fix the step above; the Dockerfile comes from templates/docker/Dockerfile.j2",
        details={"step": step.summary() if step else None, "code": code, "tail": tail},
    )


def build_image(
    client: EngineClient, config: Config, *, version: str | None = None, gpu: bool | None = None
) -> BuildResult:
    started = time.monotonic()
    gpu = wants_gpu(config, gpu)
    source = source_folder(config)
    state = source_state(source)
    if version is None:
        if state is None:
            raise UsageError(
                f"cannot derive a version: {source} is not a git checkout", hint="pass --version, e.g. --version 1.4.0"
            )
        version = version_from_state(state)
    check_version(version)
    models = baked_models(config)  # before anything slow: a bad folder is refused at once
    tag = f"{config.server.image}:{version}"
    console.step(f"building {tag}" + (" (GPU variant: torch's CUDA build)" if gpu else ""))

    base = ensure_base(client, config)
    boot.report(base)

    digest = None
    if models is not None:
        with console.status("models: hashing the checkpoints"):
            digest = models.digest()
        console.success(
            f"models {models.root}: {len(models.files)} files, {models.size_bytes / 1e6:.0f} MB, {digest[:19]}… (baked)"
        )

    with console.status("wheelhouse"):
        wheelhouse = make_wheelhouse(config.resolve_path(config.server.build.wheelhouse), gpu=gpu)
    how = "up to date" if wheelhouse.reused else f"filled in {wheelhouse.seconds:.1f} s"
    console.success(
        f"wheelhouse {wheelhouse.path}: {len(wheelhouse.pins)} pinned packages, "
        f"{wheelhouse.size_bytes / 1e6:.0f} MB ({how})"
    )

    # Beside the wheelhouse, so the wheels hard-link into the context instead of being copied.
    scratch_root = wheelhouse.path.parent / ".cache"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=scratch_root))
    try:
        with console.status("building the flashfit wheel"):
            wheel = build_flashfit_wheel(source, scratch / "wheel")
        context = scratch / "context"
        plan = plan_context(config, wheelhouse, wheel, gpu=gpu, models=models)
        write_context(plan, context)
        console.success(f"context: {len(plan.files) + len(plan.texts)} files ({wheel.name})")
        labels = build_labels(config, version, state) | variant_label(gpu) | models_labels(models, digest)
        image_id, log = run_build(client, context, tag, labels)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    image = client.images.get(image_id)
    size = int(image.attrs.get("Size") or 0)
    deps = dependency_steps(log.steps)
    cached = bool(deps) and all(s.cached for s in deps)
    baked: dict[str, Any] = {"mode": "mounted"}
    layer = ""
    if models is not None:
        copied = models_steps(log.steps)
        reused = bool(copied) and all(s.cached for s in copied)
        baked = {"mode": "baked", "digest": digest, "files": len(models.files), "size_bytes": models.size_bytes,
                 "cached": reused}
        layer = f", models layer {'reused' if reused else 'built'}"
    seconds = round(time.monotonic() - started, 2)
    console.success(
        f"built {tag} ({image_id[7:19]}, {size / 1e6:.0f} MB) in {seconds:.1f} s; "
        f"dependency layer {'reused' if cached else 'built'}{layer}"
    )
    return BuildResult(
        image=tag,
        version=version,
        image_id=image_id,
        size_bytes=size,
        seconds=seconds,
        labels=labels,
        base=base.to_dict(),
        wheelhouse={k: v for k, v in wheelhouse.to_dict().items() if k not in ("pins", "wheels")}
        | {"pins": len(wheelhouse.pins)},
        steps=[s.summary() for s in log.steps],
        dependencies_cached=cached,
        models=baked,
    )
