"""The deploy history: `.flashfit/history.jsonl`, one JSON object per line, appended.

Every command that changes something (`flashfit_ops.runs.recorded.recorded_run`) appends a
"start" record and, when it ends, a "finish" record with the same id; one killed outright
(SIGKILL) leaves only its start, and reads back as "interrupted".

One record shape (schema 2): a start carries every START_FIELDS key, a finish every FINISH_FIELDS
key, and facts only one kind has (a restore's backup, a deploy's ready seconds) go under
"details". Files written before schema 2 (each command spelled its own record, facts at the top
level, a restore's "live_version" for the previous version) read back in the same shape:
`entries` gives every entry every core key, with the details beside them.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


SCHEMA = 2
START_FIELDS = (
    "id", "kind", "strategy", "version", "previous_version", "replicas",
    "who", "host", "pid", "command", "message", "started_at",
)  # fmt: skip
FINISH_FIELDS = ("id", "result", "exit_code", "error", "warnings", "finished_at", "duration_s")
# Kinds that change what serves; `images prune` is recorded too but leaves the service alone.
SERVICE_KINDS = frozenset({"deploy", "rollback", "repair", "stop", "start", "down", "restore"})


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
    records: list[dict[str, Any]] = []
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


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """A record's fields with its details beside them (schema 1 kept them at the top level)."""
    data = {k: v for k, v in record.items() if k not in ("event", "v", "details")}
    details = record.get("details")
    if isinstance(details, dict):
        data.update({k: v for k, v in details.items() if k not in data})
    return data


def _normalized(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("previous_version") is None and "live_version" in entry:  # a schema-1 restore
        entry["previous_version"] = entry["live_version"]
    for key in (*START_FIELDS, *FINISH_FIELDS):
        entry.setdefault(key, [] if key == "warnings" else None)
    return entry


def entries(path: Path) -> list[dict[str, Any]]:
    """One entry per run, oldest first: start and finish records merged by id, every core field
    present whatever schema wrote them."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for record in read_raw(path):
        key = str(record.get("id", ""))
        if key not in merged:
            merged[key] = {}
            order.append(key)
        merged[key].update(_flat(record))
        if record.get("event") == "start" and merged[key].get("result") is None:
            merged[key]["result"] = "interrupted"
    return [_normalized(merged[k]) for k in order]


def last_service_entry(path: Path) -> dict[str, Any] | None:
    """The newest entry of a command that changed what serves (a prune is skipped)."""
    return next((e for e in reversed(entries(path)) if (e.get("kind") or "deploy") in SERVICE_KINDS), None)


def successful_versions(path: Path) -> list[str]:
    """Versions that were deployed successfully, newest first, each once."""
    seen: list[str] = []
    for entry in reversed(entries(path)):
        version = entry.get("version")
        if entry.get("result") == "success" and version and version not in seen:
            seen.append(version)
    return seen
