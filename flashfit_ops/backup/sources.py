"""What goes into a backup: the data folder (through a server snapshot when one was taken), the
deployment configuration (flashfit.yml and the files rendered from it) and, on request, the env
file encrypted. Each becomes an Item; nothing here talks to the store."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flashfit_ops.backup.paths import UnsafePath, check_relpath, is_within
from flashfit_ops.backup.snapshot import SNAPSHOT_COVERS_DIRS, SNAPSHOT_COVERS_SUFFIXES, SNAPSHOT_DIRS, SnapshotResult
from flashfit_ops.errors import OperationFailed

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config


@dataclass
class Item:
    path: str  # path inside the backup: data/..., config/..., secrets/...
    mode: int = 0o644
    local: Path | None = None  # read from this file ...
    data: bytes | None = None  # ... or these bytes
    expected_sha256: str | None = None  # what the server's snapshot manifest says
    expected_size: int | None = None
    encryption: dict | None = None  # data is already ciphertext

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.local is not None
        return self.local.stat().st_size


def is_debris(name: str) -> bool:
    """Temporary files of an interrupted atomic write (.name.pid.tmp) are never data."""
    return name.startswith(".") and name.endswith(".tmp")


def walk_data(data_dir: Path, warnings: list[str]) -> list[tuple[str, Path, int]]:
    """(relative path, absolute path, mode) of every regular file in the data folder, except
    snapshot folders and temporary files. Links and special files are skipped with a warning."""
    found = []
    for folder, dirs, files in os.walk(data_dir):
        rel_folder = Path(folder).relative_to(data_dir)
        if rel_folder == Path("."):
            dirs[:] = [d for d in dirs if d not in SNAPSHOT_DIRS]
        for name in list(dirs):
            if os.path.islink(Path(folder) / name):
                warnings.append(f"skipped link {rel_folder / name} (links are not backed up)")
                dirs.remove(name)
        for name in sorted(files):
            full = Path(folder) / name
            rel = (rel_folder / name).as_posix()
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                warnings.append(f"skipped link {rel} (links are not backed up)")
                continue
            if not stat.S_ISREG(info.st_mode):
                warnings.append(f"skipped {rel}: not a regular file")
                continue
            if is_debris(name):
                continue
            try:
                check_relpath(rel)
            except UnsafePath as exc:
                warnings.append(f"skipped {rel!r}: {exc}")
                continue
            found.append((rel, full, info.st_mode & 0o777))
    return found


def data_items(data_dir: Path, snap: SnapshotResult | None, warnings: list[str]) -> list[Item]:
    items: dict[str, Item] = {}
    if snap is not None:
        if not is_within(data_dir, snap.folder):
            raise OperationFailed(f"the server wrote its snapshot outside the data folder ({snap.folder})")
        for entry in snap.files:
            try:
                rel = check_relpath(entry.path)
            except UnsafePath as exc:
                raise OperationFailed(f"the server's snapshot names an unsafe path {entry.path!r}: {exc}") from None
            full = snap.folder / rel
            info = os.lstat(full) if os.path.lexists(full) else None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise OperationFailed(f"the server's snapshot lists {rel}, which is not a file in {snap.folder}")
            items[f"data/{rel}"] = Item(f"data/{rel}", info.st_mode & 0o777, local=full,
                                        expected_sha256=entry.sha256, expected_size=entry.size)
    for rel, full, mode in walk_data(data_dir, warnings):
        path = f"data/{rel}"
        if path in items:
            continue
        if snap is not None and (rel.endswith(SNAPSHOT_COVERS_SUFFIXES) or rel.split("/")[0] in SNAPSHOT_COVERS_DIRS):
            continue  # live index files and images: the snapshot holds the consistent ones
        items[path] = Item(path, mode, local=full)
    return list(items.values())


def config_items(config: Config, config_file: Path | None, warnings: list[str]) -> list[Item]:
    items = []
    if config_file is not None and config_file.is_file():
        items.append(Item(f"config/{config_file.name}", 0o644, data=config_file.read_bytes()))
    try:
        from flashfit_ops.render import render_all

        for rel, rendered in sorted(render_all(config).items()):
            items.append(Item(f"config/rendered/{rel}", rendered.mode, data=rendered.text.encode()))
    except Exception as exc:  # the data matters more than the rendered copies
        warnings.append(f"rendered files not included: {exc}")
    return items


def secret_items(config: Config, key_material: str, warnings: list[str]) -> list[Item]:
    from flashfit_ops.backup.blobs import encrypt
    from flashfit_ops.config.secrets import env_file_path

    path = env_file_path(config)
    if not path.is_file():
        warnings.append(f"--include-secrets: there is no env file at {path}")
        return []
    backup_path = f"secrets/{path.name}"
    ciphertext, record = encrypt(path.read_bytes(), key_material, aad=backup_path)
    return [Item(backup_path, 0o600, data=ciphertext, encryption=record)]
