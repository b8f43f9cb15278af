"""What the proxy's folders say, read without the engine: the rendered nginx.conf (how many
slots it lists), the slot links in the sockets folder (which container each slot reaches), and
applied.json (the last completed switch). The executor writes these (execute/proxy.py); status,
repair, the doctor and the monitoring targets read them, so reading lives apart from writing:
monitoring need not import the executor (which imports monitoring to move scrape targets)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from flashfit_ops.plan.common import PROXY_CONFIG_FILE, SOCKET_DIR, slot_socket

APPLIED_FILE = "applied.json"
CANDIDATE_FILE = "nginx.conf.next"
_SLOT_LINE = re.compile(r"^\s*server\s+unix:\S*/slot-(\d+)\.sock\b")
_TCP_LINE = re.compile(r"^\s*server\s+([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)\b")
_SLOT_FILE = re.compile(r"^slot-(\d+)\.sock$")


def _upstream_lines(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("upstream "):
            inside = True
            continue
        if inside and stripped.startswith("}"):
            inside = False
            continue
        if inside:
            lines.append(line)
    return lines


def parse_slot_count(text: str) -> int:
    """How many replica slots the upstream block of a rendered nginx.conf lists."""
    return sum(1 for line in _upstream_lines(text) if _SLOT_LINE.match(line))


def parse_upstreams(text: str) -> tuple[str, ...]:
    """Container names of an nginx.conf written before slots existed (`server <name>:8080`)."""
    return tuple(m.group(1) for line in _upstream_lines(text) if (m := _TCP_LINE.match(line)))


def slot_address(slot: int) -> str:
    return f"unix:{SOCKET_DIR}/{slot_socket(slot)}"


def standby_socket(slot: int) -> str:
    return f"slot-standby-{slot}.sock"


def assign_slots(names: tuple[str, ...], count: int) -> tuple[str, ...]:
    """What each of `count` slots links to: they cycle over `names` (every slot a live backend)."""
    return tuple(names[n % len(names)] for n in range(count)) if names else ()


def distinct(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def slot_target(sockets: Path, slot: int, file_name: str | None = None) -> str | None:
    """The container slot `slot` (or the link `file_name`) points to; None when there is no such link."""
    try:
        target = os.readlink(Path(sockets) / (file_name or slot_socket(slot)))
    except FileNotFoundError:
        return None
    except OSError:  # not a link
        return ""
    name = Path(target).name
    return name[: -len(".sock")] if name.endswith(".sock") else ""


def read_slots(sockets: Path, count: int) -> tuple[str, ...]:
    """What slots 1..count point to ("" for a missing link)."""
    return tuple(slot_target(sockets, n) or "" for n in range(1, count + 1))


def slot_links(sockets: Path) -> dict[int, str]:
    """Every slot link in the sockets folder: {slot: container}."""
    found: dict[int, str] = {}
    if Path(sockets).is_dir():
        for entry in Path(sockets).iterdir():
            match = _SLOT_FILE.match(entry.name)
            if match:
                found[int(match.group(1))] = slot_target(sockets, int(match.group(1))) or ""
    return dict(sorted(found.items()))


def upstream_links(sockets: Path) -> dict[str, str]:
    """{upstream address: container} for every slot and standby slot link in the sockets folder."""
    found = {slot_address(n): name for n, name in slot_links(sockets).items()}
    if Path(sockets).is_dir():
        for entry in sorted(Path(sockets).glob("slot-standby-*.sock")):
            found[f"unix:{SOCKET_DIR}/{entry.name}"] = slot_target(sockets, 0, entry.name) or ""
    return found


@dataclass(frozen=True)
class ProxyFiles:
    # The containers the slot links point to now, in slot order, each once (a crash mid-switch
    # can leave them different from `applied`); for an nginx.conf older than slots, its servers.
    config: tuple[str, ...]
    config_present: bool
    # The slots of the last completed switch (applied.json).
    applied: tuple[str, ...]
    applied_present: bool
    stray: tuple[str, ...]
    served: tuple[str, ...] | None = None
    # nginx.conf as it is now, and as the last completed switch left it (applied.json): equal
    # means nginx has run this very file since, so it need not be tested again.
    config_sha256: str | None = None
    applied_config_sha256: str | None = None
    # How many slots nginx.conf lists, and the text itself.
    slot_count: int = 0
    text: str | None = None
    # The containers the standby slots point to now, each once (the previous version through a
    # deploy's monitor window; otherwise the same as `config`).
    standby: tuple[str, ...] = ()

    @property
    def config_unchanged(self) -> bool:
        return self.config_sha256 is not None and self.config_sha256 == self.applied_config_sha256


def read_files(folder: Path, sockets: Path | None = None) -> ProxyFiles:
    """The proxy folder (`folder`) and the sockets folder beside it."""
    folder = Path(folder)
    sockets = Path(sockets) if sockets is not None else folder.parent / "sockets"
    config: tuple[str, ...] = ()
    standby: tuple[str, ...] = ()
    present = False
    digest: str | None = None
    count = 0
    text: str | None = None
    try:
        raw = (folder / PROXY_CONFIG_FILE).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        text = raw.decode("utf-8")
        present = True
        count = parse_slot_count(text)
        config = distinct(read_slots(sockets, count)) if count else parse_upstreams(text)
        standby = distinct(tuple(n for k in range(1, count + 1) if (n := slot_target(sockets, k, standby_socket(k)))))
    except (FileNotFoundError, UnicodeDecodeError):
        text = None
    applied: tuple[str, ...] = ()
    applied_present = False
    served: tuple[str, ...] | None = None
    applied_digest: str | None = None
    try:
        data = json.loads((folder / APPLIED_FILE).read_text(encoding="utf-8"))
        applied = tuple(str(n) for n in data.get("slots", data.get("upstreams", [])))
        applied_present = True
        if isinstance(data.get("served"), list):
            served = tuple(str(n) for n in data["served"])
        if isinstance(data.get("config_sha256"), str):
            applied_digest = data["config_sha256"]
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    stray = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.name == CANDIDATE_FILE or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                stray.append(entry.name)
    if sockets.is_dir():
        for entry in sorted(sockets.iterdir()):
            if entry.name.startswith("slot-") and entry.name.endswith(".tmp"):
                stray.append(entry.name)
    return ProxyFiles(config, present, applied, applied_present, tuple(stray), served, digest, applied_digest, count, text, standby)
