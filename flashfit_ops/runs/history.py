"""The deploy history: `.flashfit/history.jsonl`, one JSON object per line, appended.

A deploy appends a "start" record and, when it ends, a "finish" record with the same id; a deploy
killed outright (SIGKILL) leaves only its start, and reads back as "interrupted"."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


def append(path: Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_raw(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue  # a torn last line of a crashed write: skip it
        if isinstance(value, dict):
            records.append(value)
    return records


def entries(path: Path) -> list[dict[str, Any]]:
    """One entry per deploy, oldest first: start and finish records merged by id."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for record in read_raw(path):
        key = str(record.get("id", ""))
        if key not in merged:
            merged[key] = {}
            order.append(key)
        event = record.get("event")
        data = {k: v for k, v in record.items() if k != "event"}
        merged[key].update(data)
        if event == "start" and "result" not in merged[key]:
            merged[key]["result"] = "interrupted"
    return [merged[k] for k in order]


def successful_versions(path: Path) -> list[str]:
    """Versions that were deployed successfully, newest first, each once."""
    seen: list[str] = []
    for entry in reversed(entries(path)):
        version = entry.get("version")
        if entry.get("result") == "success" and version and version not in seen:
            seen.append(version)
    return seen
