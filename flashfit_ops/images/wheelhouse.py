"""The wheelhouse: wheels for the server's dependencies, pinned to exactly what runs in this venv.

The pins come from the installed distributions, not from a resolver: the `server` extra of the
`flashfit` distribution, followed through each installed dependency's own requirements (with
their extras and environment markers), each pinned to its installed version. Tests pass against
these versions here, so the image gets the same ones.

The wheels are fetched with `pip download --only-binary=:all:` for CPython 3.11 on manylinux
x86_64 (the base image is Debian bookworm: Python 3.11, glibc 2.36). pip's own configuration
supplies local wheels (torch from /opt/wheels). A stamp file records what the folder holds, so a
second call with the same pins does nothing.

The GPU variant (`flashfit build --gpu`) lives in <wheelhouse>/gpu: the same pins, except torch,
pinned to the same release without the local "+cpu" label (the index's default Linux build, which
is CUDA's) and downloaded with its own dependencies (the nvidia-* wheels that carry the CUDA
libraries, triton), constrained to the other pins. No CUDA toolkit or CUDA base image is needed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from flashfit_ops import console
from flashfit_ops.errors import OperationFailed, Unavailable, UsageError

DISTRIBUTION = "flashfit"
EXTRA = "server"
STAMP = ".flashfit-wheelhouse.json"
REQUIREMENTS = "requirements.txt"
# The target interpreter and platform: the bootstrapped base image (Debian bookworm).
PYTHON_VERSION = "3.11"
ABI = "cp311"
GLIBC_MINOR = 36  # glibc 2.36
# pip takes --platform literally (no widening to older glibc), so every accepted tag is listed.
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)) + (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.2",
}
# The installer itself comes with the venv in the image; everything else that something requires
# (setuptools included: torch requires it at run time) is pinned.
NEVER_PINNED = frozenset({"pip"})
# The GPU variant takes these with their dependencies (the CUDA libraries come as wheels).
CUDA_PACKAGES = ("torch",)
GPU_FOLDER = "gpu"


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    required_by: str

    def line(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class Wheelhouse:
    path: Path
    requirements: Path
    pins: list[Pin]
    wheels: list[str]
    size_bytes: int
    reused: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["requirements"] = str(self.requirements)
        out["pins"] = [p.line() for p in self.pins]
        return out


# ---------------------------------------------------------------------------------------------
# Pins: pure functions over "what is installed"


def _marker_matches(marker: Marker | None, extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    extras = list(extras) or [""]
    return any(marker.evaluate({**TARGET_ENVIRONMENT, "extra": extra}) for extra in extras)


def _wanted(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Does `requirement` (from a distribution's metadata) apply when these extras are asked for?"""
    return _marker_matches(requirement.marker, extras)


def resolve_pins(
    roots: list[Requirement],
    requires: Callable[[str], list[str] | None],
    version_of: Callable[[str], str | None],
    *,
    root_name: str = DISTRIBUTION,
) -> list[Pin]:
    """The transitive closure of `roots` over installed distributions, each pinned to its version.

    requires(name) -> the distribution's requirement strings (None when not installed);
    version_of(name) -> its installed version (None when not installed)."""
    pins: dict[str, Pin] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    missing: list[str] = []
    queue: deque[tuple[Requirement, str]] = deque((r, root_name) for r in roots)
    while queue:
        requirement, parent = queue.popleft()
        name = canonicalize_name(requirement.name)
        if name in NEVER_PINNED:
            continue
        extras = frozenset(requirement.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        version = version_of(name)
        if version is None:
            missing.append(f"{requirement} (needed by {parent})")
            continue
        if requirement.specifier and not requirement.specifier.contains(Version(version), prereleases=True):
            raise UsageError(
                f"{name} {version} is installed but {parent} needs {requirement}",
                hint=f"pip install -e '.[{EXTRA}]' to bring the venv in line, then build again",
            )
        pins.setdefault(name, Pin(name, version, parent))
        for text in requires(name) or []:
            try:
                child = Requirement(text)
            except InvalidRequirement:
                continue
            if _wanted(child, extras):
                queue.append((child, name))
    if missing:
        raise UsageError(
            "these server dependencies are not installed in this venv: " + "; ".join(sorted(missing)),
            hint=f"pip install -e '.[{EXTRA}]' (the image pins what is installed here)",
        )
    return sorted(pins.values(), key=lambda p: p.name)


def extra_requirements(distribution: str = DISTRIBUTION, extra: str = EXTRA) -> list[Requirement]:
    """The requirements that the extra adds (not the distribution's base dependencies)."""
    try:
        texts = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        raise UsageError(f"the {distribution} distribution is not installed", hint="pip install -e '.[server]'") from None
    found = []
    for text in texts:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or "extra" not in str(marker):
            continue
        if _marker_matches(marker, [extra]) and not _marker_matches(marker, [""]):
            requirement.marker = None
            found.append(requirement)
    if not found:
        raise UsageError(f"the {distribution} distribution declares no [{extra}] extra")
    return found


def _installed_requires(name: str) -> list[str] | None:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def server_pins() -> list[Pin]:
    return resolve_pins(extra_requirements(), _installed_requires, _installed_version)


def gpu_pins(pins: list[Pin]) -> list[Pin]:
    """The GPU variant's pins: torch's CPU build (2.13.0+cpu) becomes the same release's default
    build (2.13.0), which on Linux x86_64 is the CUDA one."""
    out = []
    for pin in pins:
        if pin.name in CUDA_PACKAGES:
            pin = Pin(pin.name, Version(pin.version).public, f"{pin.required_by} (CUDA build)")
        out.append(pin)
    return out


def requirements_text(pins: list[Pin]) -> str:
    lines = [
        "# The server's dependencies, pinned to the versions installed where `flashfit build` ran.",
        "# Written by flashfit; installed in the image from the wheelhouse only (pip --no-index).",
    ]
    lines += [pin.line() for pin in pins]
    return "\n".join(lines) + "\n"


def pip_download_command(
    requirements: Path, dest: Path, python: str = sys.executable, *, constraints: Path | None = None
) -> list[str]:
    """Without constraints: exactly the pinned wheels (the pins are the closure; pip resolves
    nothing). With constraints (the GPU variant's CUDA packages): their dependencies too, at the
    pinned versions wherever a pin exists."""
    deps = ["-c", str(constraints)] if constraints else ["--no-deps"]
    return [
        python, "-m", "pip", "download",
        "--only-binary=:all:",
        "--python-version", PYTHON_VERSION,
        "--implementation", "cp",
        "--abi", ABI,
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        *deps,
        "--progress-bar", "off",
        "-d", str(dest),
        "-r", str(requirements),
    ]


def _stamp_payload(text: str, gpu: bool = False) -> dict:
    payload = {
        "requirements_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "target": {"python": PYTHON_VERSION, "abi": ABI, "platforms": list(PLATFORMS)},
    }
    if gpu:
        payload["variant"] = "gpu"
    return payload


def wheel_matches(filename: str, pins: dict[str, str]) -> bool:
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    wanted = pins.get(canonicalize_name(name))
    return wanted is not None and Version(wanted) == version


def stamp_is_current(folder: Path, text: str, gpu: bool = False) -> list[str] | None:
    """The wheel names the stamp vouches for when it matches these requirements and every wheel is
    still there at its recorded size; otherwise None."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    expected = _stamp_payload(text, gpu)
    if {k: stamp.get(k) for k in expected} != expected or ("variant" in stamp) != gpu:
        return None
    wheels = stamp.get("wheels") or {}
    for name, size in wheels.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return sorted(wheels)


def wheelhouse_folder(folder: Path, gpu: bool = False) -> Path:
    return Path(folder) / GPU_FOLDER if gpu else Path(folder)


def make_wheelhouse(folder: Path, *, pins: list[Pin] | None = None, gpu: bool = False) -> Wheelhouse:
    """Fill `folder` (its gpu/ subfolder for the GPU variant) with one wheel per pin and write
    requirements.txt; nothing to do when the stamp matches. Concurrent builds take turns."""
    folder = wheelhouse_folder(folder, gpu)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pins = server_pins() if pins is None else pins
        return _make_wheelhouse(folder, gpu_pins(pins) if gpu else pins, gpu)


def download_commands(folder: Path, requirements: Path, pins: list[Pin], gpu: bool) -> list[list[str]]:
    """The pip runs that fill the folder: one for the CPU variant; for the GPU variant the other
    pins first, then the CUDA packages with their dependencies, constrained to the pins."""
    if not gpu:
        return [pip_download_command(requirements, folder)]
    plain = folder / "requirements-plain.txt"
    cuda = folder / "requirements-cuda.txt"
    plain.write_text(requirements_text([p for p in pins if p.name not in CUDA_PACKAGES]))
    cuda.write_text(requirements_text([p for p in pins if p.name in CUDA_PACKAGES]))
    return [pip_download_command(plain, folder), pip_download_command(cuda, folder, constraints=requirements)]


def _make_wheelhouse(folder: Path, pins: list[Pin], gpu: bool = False) -> Wheelhouse:
    started = time.monotonic()
    text = requirements_text(pins)
    requirements = folder / REQUIREMENTS
    current = stamp_is_current(folder, text, gpu)
    if current is not None and requirements.is_file() and requirements.read_text() == text:
        return _summary(folder, requirements, pins, current, True, started)
    requirements.write_text(text)
    (folder / STAMP).unlink(missing_ok=True)
    fetched: set[str] = set()
    for command in download_commands(folder, requirements, pins, gpu):
        fetched |= _run_pip(command, len(pins))
    by_pin = {p.name: p.version for p in pins}
    wheels = sorted(p.name for p in folder.glob("*.whl") if wheel_matches(p.name, by_pin))
    if gpu:  # what the CUDA packages pulled in (nvidia-*, triton), as pip reported it
        wheels = sorted(set(wheels) | {
            name for name in fetched
            if name.endswith(".whl") and (folder / name).is_file()
            and canonicalize_name(parse_wheel_filename(name)[0]) not in by_pin
        })
    stale = [p for p in folder.iterdir() if p.is_file() and p.suffix == ".whl" and p.name not in wheels]
    for path in stale:  # wheels of earlier pins
        path.unlink()
    have = {canonicalize_name(parse_wheel_filename(w)[0]) for w in wheels}
    lacking = sorted(set(by_pin) - have)
    if lacking:
        raise OperationFailed(f"the wheelhouse lacks wheels for: {', '.join(lacking)}")
    stamp = {**_stamp_payload(text, gpu), "wheels": {w: (folder / w).stat().st_size for w in wheels}}
    (folder / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return _summary(folder, requirements, pins, wheels, False, started)


_PIP_FILE = re.compile(r"(?:Saved|File was already downloaded)\s+(\S+)")


def _run_pip(command: list[str], count: int) -> set[str]:
    """Run one pip download; the names of the files it saved or found already there."""
    tail: deque[str] = deque(maxlen=12)
    files: set[str] = set()
    with console.status(f"downloading wheels for {count} pinned packages") as live:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as error:
            raise Unavailable(f"cannot run pip: {error}") from None
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                live.update(f"wheelhouse: {line[:100]}")
                match = _PIP_FILE.search(line)
                if match:
                    files.add(Path(match.group(1)).name)
        code = process.wait()
    if code != 0:
        raise OperationFailed(
            "pip download failed:\n  " + "\n  ".join(tail),
            hint="the host needs PyPI (or a configured index) for the wheelhouse; the image build itself needs none",
        )
    return files


def _summary(folder: Path, requirements: Path, pins: list[Pin], wheels: list[str], reused: bool, started: float) -> Wheelhouse:
    size = sum((folder / w).stat().st_size for w in wheels)
    return Wheelhouse(folder, requirements, pins, wheels, size, reused, round(time.monotonic() - started, 2))
