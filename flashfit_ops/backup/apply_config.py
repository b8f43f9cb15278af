"""Restore, step 3 of 3: the configuration. After the swap the review folder takes its name
(restore-<id>); with --apply-config the backed-up flashfit.yml and env file are written in place,
each old one kept beside it as *.previous-<time>, never with wider permissions than before."""

from __future__ import annotations

import os
import shutil
import stat
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from flashfit_ops.backup.common import stamp, unused
from flashfit_ops.backup.manifest import Manifest, config_file_name
from flashfit_ops.errors import IntegrityFailure
from flashfit_ops.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

Copy = tuple[Path, Path, int]  # (from the review folder, to, the most permissive mode for its kind)


def publish_review(review_tmp: Path, review: Path) -> None:
    """The staged review folder becomes restore-<id>, replacing one from an earlier restore."""
    if review.exists():
        shutil.rmtree(review)
    os.rename(review_tmp, review)


def apply_config(config: Config, manifest: Manifest, review: Path, config_file: Path | None, now: datetime) -> list[str]:
    """Write the backed-up flashfit.yml and env file in place, keeping each old one beside it."""
    applied = []
    for source, dest, most in _copies(config, manifest, review, config_file):
        _replace_keeping_old(source, dest, most, stamp(now))
        applied.append(str(dest))
    return applied


def _copies(config: Config, manifest: Manifest, review: Path, config_file: Path | None) -> list[Copy]:
    from flashfit_ops.config.secrets import env_file_path

    try:  # checked when the manifest was read; again here, since it names a file to copy
        name = config_file_name((manifest.extra or {}).get("config_file"))
    except ValueError as exc:
        raise IntegrityFailure(f"backup {manifest.id}: {exc}", hint="the configuration was not applied") from None
    copies: list[Copy] = []
    if name and config_file is not None and _regular_file(review / "config" / name):
        copies.append((review / "config" / name, config_file, 0o644))
    env_path = env_file_path(config)
    if _regular_file(review / "secrets" / env_path.name):
        copies.append((review / "secrets" / env_path.name, env_path, 0o600))
    return copies


def _replace_keeping_old(source: Path, dest: Path, most: int, when: str) -> None:
    # Never wider than the file it replaces, nor than the default for its kind.
    mode = most
    if dest.exists():
        mode = most & os.stat(dest).st_mode
        keep = unused(dest.with_name(f"{dest.name}.previous-{when}"))
        shutil.copy2(dest, keep)
        os.chmod(keep, mode)
    atomic_write_bytes(dest, source.read_bytes(), mode=mode)


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
