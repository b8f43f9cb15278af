"""Base images without a registry: a root filesystem from Debian packages (debootstrap), slimmed,
tarred and `docker import`ed.

  flashfit/debian-python:bookworm   minbase + python3, python3-venv, ca-certificates
  flashfit/nginx:bookworm           minbase + Debian's nginx, logs on stdout/stderr
  flashfit/prometheus:bookworm      the base image + Debian's prometheus (apt-get over plain http)
  flashfit/alertmanager:bookworm    the base image + Debian's prometheus-alertmanager

Two caches under <config folder>/.cache/images/ make a second run fast:
  debs/                   the downloaded .deb files (debootstrap --cache-dir)
  <image>-<recipe>.tar    the finished root filesystem; importing it takes seconds
The recipe key hashes everything that shapes the filesystem, so changing a package list builds anew.

For every image the path taken is reported: found locally, pulled, or built from Debian packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flashfit_ops import console
from flashfit_ops.errors import OperationFailed, Unavailable, UsageError
from flashfit_ops.labels import LABEL_RECIPE as RECIPE_LABEL

if TYPE_CHECKING:  # pragma: no cover
    import docker

DEBOOTSTRAP = "/usr/sbin/debootstrap"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "FLASHFIT_DEBIAN_MIRROR"
SUITE = "bookworm"
# Bump when the slimming or the import changes differ in a way the key would not see.
RECIPE_REVISION = 1
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

FOUND = "found locally"
PULLED = "pulled"
BUILT = "built from Debian packages"

# What debian:bookworm-slim leaves out; later `apt-get install`s in derived images honour it too.
DPKG_SLIM = """\
# Written by flashfit images bootstrap: keep the image small, as debian:*-slim does.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
APT_SLIM = """\
# Written by flashfit images bootstrap: no recommends, no package cache left in layers.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Acquire::GzipIndexes "true";
"""


@dataclass(frozen=True)
class Recipe:
    """One image built from Debian packages."""

    image: str
    kind: str  # names the cached root filesystem, whatever tag the image gets
    packages: tuple[str, ...]
    changes: tuple[str, ...]
    suite: str = SUITE
    variant: str = "minbase"
    # Extra filesystem edits after slimming, by name (see _FINISHERS), so the recipe stays hashable data.
    finish: tuple[str, ...] = ()

    def key(self, mirror: str) -> str:
        """Identity of the root filesystem: same key, same tarball."""
        payload = json.dumps(
            {
                "revision": RECIPE_REVISION,
                "kind": self.kind,
                "suite": self.suite,
                "variant": self.variant,
                "packages": sorted(self.packages),
                "finish": list(self.finish),
                "mirror": mirror.rstrip("/"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def import_changes(self, key: str) -> list[str]:
        """Dockerfile instructions applied by `docker import` (an imported image has no config at all)."""
        return [
            f"ENV PATH={STANDARD_PATH}",
            "ENV LANG=C.UTF-8",
            f"LABEL {RECIPE_LABEL}={key}",
            f"LABEL org.opencontainers.image.description=\"Debian {self.suite} {self.variant} + {' '.join(self.packages)}\"",
            *self.changes,
        ]

    def tarball_name(self, key: str) -> str:
        return f"{self.kind}-{self.suite}-{key}.tar"


BASE = Recipe(
    image="flashfit/debian-python:bookworm",
    kind="debian-python",
    packages=("python3", "python3-venv", "ca-certificates"),
    changes=('CMD ["python3"]',),
)
PROXY = Recipe(
    image="flashfit/nginx:bookworm",
    kind="nginx",
    packages=("nginx",),
    changes=("EXPOSE 80", 'CMD ["nginx", "-g", "daemon off;"]'),
    finish=("nginx-logs-to-stdio",),
)
RECIPES: dict[str, Recipe] = {"base": BASE, "proxy": PROXY}


@dataclass(frozen=True)
class DerivedRecipe:
    """An image built on the bootstrapped base with `apt-get install` (Debian's mirror over plain
    http, so no certificates are needed inside the build), for the monitoring containers."""

    image: str
    packages: tuple[str, ...]
    entrypoint: tuple[str, ...]
    # Shell run after the install, e.g. the folders the program writes to.
    after: str = "true"
    base: Recipe = BASE

    def key(self) -> str:
        payload = json.dumps([RECIPE_REVISION, self.base.image, sorted(self.packages), list(self.entrypoint), self.after])
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def dockerfile(self) -> str:
        return (
            f"FROM {self.base.image}\n"
            "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            f"{' '.join(self.packages)} && rm -rf /var/lib/apt/lists/* && {self.after}\n"
            f"LABEL {RECIPE_LABEL}={self.key()}\n"
            f"ENTRYPOINT {json.dumps(list(self.entrypoint))}\n"
        )


PROMETHEUS = DerivedRecipe(
    image="flashfit/prometheus:bookworm",
    packages=("prometheus",),
    entrypoint=("prometheus",),
    after="mkdir -p /prometheus",
)
ALERTMANAGER = DerivedRecipe(
    image="flashfit/alertmanager:bookworm",
    packages=("prometheus-alertmanager",),
    entrypoint=("prometheus-alertmanager",),
    after="mkdir -p /alertmanager",
)
DERIVED: dict[str, DerivedRecipe] = {"prometheus": PROMETHEUS, "alertmanager": ALERTMANAGER}
BOOTSTRAPPABLE = {r.image: r for r in RECIPES.values()}


@dataclass
class ImageOutcome:
    image: str
    path: str  # FOUND, PULLED or BUILT
    seconds: float
    image_id: str | None = None
    size_bytes: int | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Root filesystem: debootstrap, slim, tar (pure file work; no Docker)


def slim_rootfs(root: Path) -> None:
    """Remove what a container never needs: apt lists and caches, docs, man pages, locales, logs,
    and host files debootstrap copied in (Docker provides resolv.conf, hostname and hosts)."""
    root = Path(root)

    def clear(folder: str, keep: Callable[[Path], bool] = lambda _p: False) -> None:
        base = root / folder
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if keep(path):
                continue
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    clear("var/lib/apt/lists", keep=lambda p: p.name == "partial" or p.name == "lock")
    clear("var/cache/apt", keep=lambda p: p.name in ("archives", "partial", "lock"))
    clear("var/cache/debconf", keep=lambda p: p.name in ("config.dat", "templates.dat", "passwords.dat"))
    clear("usr/share/doc", keep=lambda p: p.name == "copyright" or (p.is_dir() and (p / "copyright").exists()))
    clear("usr/share/man")
    clear("usr/share/info")
    clear("usr/share/locale", keep=lambda p: p.name == "locale.alias")
    clear("usr/share/lintian")
    clear("var/log", keep=lambda p: p.is_dir())
    clear("tmp")
    clear("var/tmp")
    # debootstrap's own leftovers
    shutil.rmtree(root / "debootstrap", ignore_errors=True)
    for name in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        path = root / name
        if path.is_symlink():
            path.unlink()
        if path.exists() or name != "etc/machine-id":
            path.write_text("")
    for relative, text in (("etc/dpkg/dpkg.cfg.d/flashfit-slim", DPKG_SLIM), ("etc/apt/apt.conf.d/90flashfit-slim", APT_SLIM)):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _nginx_logs_to_stdio(root: Path) -> None:
    logs = root / "var/log/nginx"
    logs.mkdir(parents=True, exist_ok=True)
    for name, target in (("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")):
        path = logs / name
        if path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(target)
    if not (root / "etc/nginx/mime.types").is_file():
        raise OperationFailed("the nginx root filesystem has no /etc/nginx/mime.types")


_FINISHERS: dict[str, Callable[[Path], None]] = {"nginx-logs-to-stdio": _nginx_logs_to_stdio}


def finish_rootfs(root: Path, recipe: Recipe) -> None:
    slim_rootfs(root)
    for name in recipe.finish:
        _FINISHERS[name](root)


def debootstrap_command(recipe: Recipe, target: Path, mirror: str, debs: Path) -> list[str]:
    return [
        DEBOOTSTRAP,
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        f"--cache-dir={debs}",
        "--components=main",
        recipe.suite,
        str(target),
        mirror,
    ]


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rmtree that first detaches /proc, /sys or /dev left mounted by an interrupted debootstrap,
    so it never deletes through them."""
    for point in _mounts_below(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_below(path):
        raise OperationFailed(f"cannot clean {path}: something is still mounted below it", hint="umount it by hand")
    shutil.rmtree(path, ignore_errors=True)


def _run_logged(command: list[str], label: str, log_path: Path) -> None:
    """Run a long command, showing its latest line on the status spinner; on failure raise with its tail."""
    tail: deque[str] = deque(maxlen=15)
    with open(log_path, "w", encoding="utf-8") as log, console.status(label) as live:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                line = line.rstrip()
                if line:
                    tail.append(line)
                    live.update(f"{label}: {line[:100]}")
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    if code != 0:
        raise OperationFailed(
            f"{label} failed (exit {code}):\n  " + "\n  ".join(tail),
            hint=f"full log in {log_path}; check that {DEFAULT_MIRROR} (or ${MIRROR_ENV}) is reachable over http",
        )


def build_rootfs_tarball(recipe: Recipe, cache: Path, mirror: str) -> tuple[Path, bool]:
    """The root filesystem tarball for a recipe, from the cache or built now. Returns (path, cached)."""
    key = recipe.key(mirror)
    tarball = cache / recipe.tarball_name(key)
    if tarball.is_file():
        return tarball, True
    if not Path(DEBOOTSTRAP).exists():
        raise Unavailable("debootstrap is not installed", hint="apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise UsageError("building images from Debian packages needs root (debootstrap chroots)", hint="run it as root")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    try:
        root = work / "rootfs"
        log = cache / f"{recipe.tarball_name(key)[:-4]}.log"
        _run_logged(debootstrap_command(recipe, root, mirror, debs), f"debootstrap {recipe.image}", log)
        finish_rootfs(root, recipe)
        partial = work / "rootfs.tar"
        # /dev, /proc and /sys are the engine's business; numeric owners keep uids exact.
        tar = ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial),
               "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "."]
        done = subprocess.run(tar, capture_output=True, text=True)
        if done.returncode != 0:
            raise OperationFailed(f"tar of the root filesystem failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, tarball)
    finally:
        _remove_tree(work)
    return tarball, False


# ---------------------------------------------------------------------------------------------
# Images: found, pulled or built


def split_reference(reference: str) -> tuple[str, str]:
    """"repo/name:tag" -> ("repo/name", "tag"); a port in a registry host is not a tag."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return reference, "latest"
    return name, tag


def local_image(client: "docker.DockerClient", reference: str) -> Any | None:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(reference)
    except ImageNotFound:
        return None


def try_pull(client: "docker.DockerClient", reference: str) -> tuple[Any | None, str]:
    """Pull an image; (image, "") on success, (None, reason) when no registry serves it."""
    from docker.errors import APIError, DockerException

    repository, tag = split_reference(reference)
    try:
        return client.images.pull(repository, tag=tag), ""
    except (APIError, DockerException) as error:
        reason = getattr(error, "explanation", None) or str(error)
        return None, str(reason).splitlines()[0][:200]


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir(base_dir: Path) -> Path:
    return Path(base_dir) / ".cache" / "images"


def mirror_from_env() -> str:
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def ensure_image(
    client: "docker.DockerClient",
    recipe: Recipe,
    cache: Path,
    *,
    force: bool = False,
    pull: bool = True,
    mirror: str | None = None,
) -> ImageOutcome:
    """The image for a recipe: the local one, else a pulled one, else built from Debian packages.
    `force` skips the first two and rebuilds (the cached root filesystem is still used)."""
    mirror = mirror or mirror_from_env()
    key = recipe.key(mirror)
    started = time.monotonic()
    warnings: list[str] = []
    if not force:
        image = local_image(client, recipe.image)
        if image is not None:
            label = (image.labels or {}).get(RECIPE_LABEL)
            if label and label != key:
                warnings.append(f"{recipe.image} was built from another recipe ({label}); --force rebuilds it")
            return _outcome(recipe.image, FOUND, started, image, warnings=warnings)
        if pull:
            image, reason = try_pull(client, recipe.image)
            if image is not None:
                return _outcome(recipe.image, PULLED, started, image)
            console.info(f"  [dim]{recipe.image} cannot be pulled ({reason}); building it from Debian packages[/]")
    superseded = local_image(client, recipe.image) if force else None
    with _locked(cache):
        tarball, cached = build_rootfs_tarball(recipe, cache, mirror)
        image = import_rootfs(client, tarball, recipe, key)
    if superseded is not None and superseded.id != image.id:
        _remove_if_unused(client, superseded.id)
    detail = "root filesystem from the cache" if cached else f"debootstrap {recipe.suite} from {mirror}"
    return _outcome(recipe.image, BUILT, started, image, detail=detail, warnings=warnings)


def ensure_derived(
    client: "docker.DockerClient", recipe: DerivedRecipe, cache: Path, *, force: bool = False, mirror: str | None = None
) -> ImageOutcome:
    """The image of a derived recipe: the local one, else built on the base image (itself found
    or bootstrapped first). Never pulled: the name is ours, no registry serves it."""
    started = time.monotonic()
    if not force:
        image = local_image(client, recipe.image)
        if image is not None:
            return _outcome(recipe.image, FOUND, started, image)
    ensure_image(client, recipe.base, cache, pull=False, mirror=mirror)
    image = build_derived(client, recipe)
    return _outcome(recipe.image, BUILT, started, image, detail=f"apt-get install {' '.join(recipe.packages)} on {recipe.base.image}")


def build_derived(client: "docker.DockerClient", recipe: DerivedRecipe) -> Any:
    import io

    from docker.errors import APIError

    tail: deque[str] = deque(maxlen=15)
    previous = client.api.timeout
    client.api.timeout = 900
    try:
        with console.status(f"building {recipe.image}") as live:
            stream = client.api.build(
                fileobj=io.BytesIO(recipe.dockerfile().encode()), tag=recipe.image, rm=True, forcerm=True, pull=False, decode=True
            )
            for message in stream:
                if message.get("error"):
                    raise OperationFailed(
                        f"building {recipe.image} failed: {message['error'].strip()}\n  " + "\n  ".join(tail),
                        hint=f"containers must reach {DEFAULT_MIRROR} (or ${MIRROR_ENV}) over http",
                    )
                line = str(message.get("stream") or "").strip()
                if line:
                    tail.append(line)
                    live.update(f"{recipe.image}: {line[:100]}")
    except APIError as error:
        raise OperationFailed(f"building {recipe.image} failed: {error.explanation or error}") from None
    finally:
        client.api.timeout = previous
    image = local_image(client, recipe.image)
    if image is None:
        raise OperationFailed(f"the build of {recipe.image} reported success but the image is missing")
    return image


def _remove_if_unused(client: "docker.DockerClient", image_id: str) -> None:
    """Drop the image a forced rebuild replaced, unless a container or a derived image still uses it."""
    from docker.errors import APIError

    try:
        if not client.images.get(image_id).tags:
            client.images.remove(image_id)
    except APIError:  # in use (409) or already gone (404): leave it
        pass


def import_rootfs(client: "docker.DockerClient", tarball: Path, recipe: Recipe, key: str) -> Any:
    from docker.errors import APIError

    repository, tag = split_reference(recipe.image)
    previous = client.api.timeout
    client.api.timeout = 900  # a few hundred MB to register
    try:
        with console.status(f"importing {recipe.image}"):
            answer = client.api.import_image_from_file(
                str(tarball), repository=repository, tag=tag, changes=recipe.import_changes(key)
            )
    except APIError as error:
        raise OperationFailed(f"docker import of {recipe.image} failed: {error.explanation or error}") from None
    finally:
        client.api.timeout = previous
    for line in str(answer).splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("error"):
                raise OperationFailed(f"docker import of {recipe.image} failed: {message['error']}")
    image = local_image(client, recipe.image)
    if image is None:
        raise OperationFailed(f"docker import of {recipe.image} reported success but the image is missing")
    return image


def _outcome(name: str, path: str, started: float, image: Any, *, detail: str = "", warnings: list[str] | None = None) -> ImageOutcome:
    return ImageOutcome(
        image=name,
        path=path,
        seconds=round(time.monotonic() - started, 2),
        image_id=getattr(image, "id", None),
        size_bytes=(getattr(image, "attrs", {}) or {}).get("Size"),
        detail=detail,
        warnings=warnings or [],
    )


def bootstrap(
    client: "docker.DockerClient",
    base_dir: Path,
    *,
    which: list[str] | None = None,
    force: bool = False,
    pull: bool = True,
    mirror: str | None = None,
) -> list[ImageOutcome]:
    """Make sure the base and proxy images exist (the monitoring ones when named). Reports each as
    it is settled."""
    names = which or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES and n not in DERIVED]
    if unknown:
        raise UsageError(f"unknown image {', '.join(unknown)}", hint=f"choose from {', '.join([*RECIPES, *DERIVED])}")
    cache = cache_dir(base_dir)
    outcomes = []
    for name in names:
        if name in DERIVED:
            console.step(DERIVED[name].image)
            outcome = ensure_derived(client, DERIVED[name], cache, force=force, mirror=mirror)
            report(outcome)
            outcomes.append(outcome)
            continue
        recipe = RECIPES[name]
        console.step(f"{recipe.image}")
        outcome = ensure_image(client, recipe, cache, force=force, pull=pull, mirror=mirror)
        report(outcome)
        outcomes.append(outcome)
    return outcomes


def report(outcome: ImageOutcome) -> None:
    size = f", {outcome.size_bytes / 1e6:.0f} MB" if outcome.size_bytes else ""
    detail = f" ({outcome.detail})" if outcome.detail else ""
    verb = "base image" if outcome.image == BASE.image else "image"
    console.success(f"{verb} {outcome.image} {outcome.path}{detail} in {outcome.seconds:.1f} s{size}")
    for warning in outcome.warnings:
        console.warn(warning)
