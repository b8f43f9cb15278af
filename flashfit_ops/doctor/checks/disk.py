"""Free disk on the data and model volumes (the host folder or the volume's Mountpoint). Models
baked into the image (server.build.models: baked) have no host folder to check: the check says so,
with the digest the running backend's image records, instead of failing on an absent folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flashfit_ops.doctor.context import DoctorContext, attrs_of, labels_of
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine
from flashfit_ops.labels import LABEL_MODELS, LABEL_MODELS_DIGEST
from flashfit_ops.service_spec import models_baked

USED_WARN = 0.85
USED_FAIL = 0.95
DISK_HINT = ("free space on {path} (old backups, `flashfit-server clear-cache` for index debris, "
             "`flashfit images prune` when it shares a disk with the engine's images) "
             "or move {key} to a larger disk")


def usage_of(path: Path) -> dict[str, int]:
    stat = os.statvfs(path)
    total = stat.f_blocks * stat.f_frsize
    free = stat.f_bavail * stat.f_frsize  # what an unprivileged writer (the server) can still use
    used = total - stat.f_bfree * stat.f_frsize
    return {"total": total, "free": free, "used": used}


def judge(key: str, path: str, usage: dict[str, int]) -> tuple[str, str, str | None]:
    total = usage["total"]
    if total <= 0:
        return OK, f"{key}: size unknown", None
    fraction = 1.0 - usage["free"] / total
    text = f"{key} {fraction:.0%} used ({_human(usage['free'])} free of {_human(total)})"
    hint = DISK_HINT.format(path=path, key=key)
    if fraction >= USED_FAIL:
        return FAILURE, text, hint
    if fraction >= USED_WARN:
        return WARNING, text, hint
    return OK, text, None


def _human(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"  # pragma: no cover


def locations(ctx: DoctorContext) -> dict[str, str]:
    """{"volumes.data": host path, "volumes.models": host path}: from a backend's mounts when one
    exists (what the server really writes to), else from the config."""
    env = ctx.config.server.environment
    wanted = {env.VECTOR_STORE_DIR: "volumes.data", env.MODEL_CACHE_DIR: "volumes.models"}
    found: dict[str, str] = {}
    backends = ctx.backends(running_only=True) or ctx.backends()
    if backends:
        for mount in attrs_of(backends[0]).get("Mounts") or []:
            key = wanted.get(mount.get("Destination"))
            if key and mount.get("Source"):
                found[key] = mount["Source"]
    for key, source in (("volumes.data", ctx.config.volumes.data), ("volumes.models", ctx.config.volumes.models)):
        if key == "volumes.models" and models_baked(ctx.config):
            continue  # in the image; a backend deployed before the switch still shows its mount
        if key in found:
            continue
        if source.startswith(("/", ".")):
            found[key] = str(ctx.config.resolve_path(source))
        else:
            from flashfit_ops.backup.location import volume_mountpoint

            found[key] = str(volume_mountpoint(f"{ctx.project}_{source}", ctx.project, ctx.docker()))
    return found


def baked_models(ctx: DoctorContext) -> dict[str, Any]:
    """What the backend's image says of its models (containers carry their image's labels)."""
    backends = ctx.backends(running_only=True) or ctx.backends()
    labels = labels_of(backends[0]) if backends else {}
    return {"baked": True, "image_models": labels.get(LABEL_MODELS), "digest": labels.get(LABEL_MODELS_DIGEST)}


@check("disk", "Free disk on the data and model volumes", timeout=10.0)
def disk(ctx: DoctorContext) -> Finding:
    parts: list[tuple[str, str, str | None]] = []
    details: dict[str, Any] = {}
    seen: dict[str, dict[str, int]] = {}
    where = locations(ctx)
    if "volumes.models" not in where and models_baked(ctx.config):
        details["volumes.models"] = baked = baked_models(ctx)
        digest = f" ({baked['digest'][:19]}…)" if baked["digest"] else ""
        parts.append((OK, f"volumes.models baked into the image{digest}", None))
    for key, path in sorted(where.items()):
        try:
            usage = seen.get(path) or usage_of(Path(path))
        except OSError as error:
            parts.append((FAILURE, f"{key}: cannot read {path}: {error.strerror or error}",
                          f"create it or fix {key}; a deploy creates volumes"))
            details[key] = {"path": path, "error": str(error)}
            continue
        seen[path] = usage
        details[key] = {"path": path, **usage}
        parts.append(judge(key, path, usage))
    summary = "; ".join(m for s, m, _ in parts if s == OK)
    return combine(parts, summary or "no volumes", volumes=details)
