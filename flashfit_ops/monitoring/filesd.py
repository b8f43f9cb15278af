"""The scrape targets file's content and its write, in the standard library only: two writers share
it, flashfit at every switch (monitoring/targets.py) and the keeper after a failover
(execute/keeper_main.py, which runs alone in its container with this file mounted beside it as
`flashfit_filesd.py`). One function makes the document, so the two can never disagree on a label
(a changed label makes Prometheus end a target's series and start new ones: a gap in `up`).

Why the labels name the container alone (no slot): see monitoring/targets.py."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

# The port every backend container listens on (plan.common.BACKEND_PORT; a unit test holds the
# two equal, since this file cannot import flashfit).
BACKEND_PORT = 8080


def color_of(project: str, name: str) -> str:
    """`<project>-backend-<color>-<replica>-<deploy>` -> color ("" for any other name)."""
    prefix = f"{project}-backend-"
    return name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""


def document(project: str, names: Iterable[str]) -> list[dict]:
    """One file_sd group per container, in the order given, each once."""
    return [
        {
            "targets": [f"{name}:{BACKEND_PORT}"],
            "labels": {"project": project, "container": name, "color": color_of(project, name)},
        }
        for name in dict.fromkeys(n for n in names if n)
    ]


def render(project: str, names: Iterable[str]) -> str:
    return json.dumps(document(project, names), indent=2) + "\n"


def write(path: str | os.PathLike[str], project: str, names: Iterable[str]) -> bool:
    """Make the file name exactly `names`: a new file renamed over the old one (Prometheus reads
    the old list or the new one, never half of one). Nothing is written when it already does, so
    a caller may sync on every pass. True when the file changed."""
    text = render(project, names)
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # readable by Prometheus whatever the writer's umask
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
