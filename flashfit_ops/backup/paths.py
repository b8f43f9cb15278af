"""Path safety for manifest entries: a backup is data from elsewhere and may be hostile.

A manifest path is a relative POSIX path of plain components. Absolute paths, `..`, `.`, empty
components, backslashes and NUL bytes are refused before anything touches the disk; on write, no
component of the destination may be a symbolic link (so a link cannot carry a write elsewhere).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(ValueError):
    """A path from a manifest that could escape the folder it is restored into."""


def check_relpath(path: object) -> str:
    """Return `path` if it is a safe relative path, else raise UnsafePath saying why."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty or not a string")
    if "\x00" in path:
        raise UnsafePath("contains a NUL byte")
    if "\\" in path:
        raise UnsafePath("contains a backslash")
    if path.startswith("/"):
        raise UnsafePath("is absolute")
    if len(path) >= 2 and path[1] == ":":
        raise UnsafePath("has a drive letter")
    for part in path.split("/"):
        if part == "..":
            raise UnsafePath("climbs out with '..'")
        if part in ("", "."):
            raise UnsafePath("has an empty or '.' component")
    return path


def join_inside(root: Path, rel: str) -> Path:
    """root/rel after checking rel; refuses when an existing component below root is a link or
    not a folder (a link placed there could redirect the write outside root)."""
    parts = check_relpath(rel).split("/")
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePath(f"{current} is a link")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(f"{current} is not a folder")
    target = current / parts[-1]
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{target} exists and is not a regular file")
    return target


def is_within(root: Path, path: Path) -> bool:
    root = Path(os.path.realpath(root))
    path = Path(os.path.realpath(path))
    return path == root or root in path.parents
