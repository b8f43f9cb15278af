"""The nginx proxy: its config folder (.flashfit/proxy, mounted at /etc/flashfit), the sockets
folder (.flashfit/sockets, mounted at /run/flashfit in the proxy and in every backend), and the
switch.

nginx's upstream lists replica SLOTS, not containers: `server unix:/run/flashfit/slot-<n>.sock`,
a fixed number of them (deploy.max_replicas, more only for more replicas), cycling over the live
containers (slot n -> containers[(n-1) % count]), without upstream keep-alive (every proxied
request opens a new connection to the slot). After them come as many STANDBY slots
(`slot-standby-<n>.sock`, nginx `backup` servers): the previous version through a deploy's monitor
window, else the live containers, tried only when every slot failed. Each backend listens on
`<container>.sock` in the same folder; every slot is a relative symbolic link to one of those.

A switch of slot n to container C: a new link `slot-<n>.sock.tmp` -> `C.sock`, renamed over
`slot-<n>.sock` (atomic), the folder fsynced. nginx's next connection for that slot reaches C;
requests in flight on the old container finish there; no client connection is touched, because
nginx is not reloaded. Then a request through each slot and one through the proxy prove the new
version serves, and the slots are recorded (applied.json) as the last completed switch.

nginx.conf is rendered, tested (`nginx -t`) and reloaded only when it changes: more replicas than
slots, or the TLS / rate-limit settings. A replica-count change within the slots is relinks only.

Symbolic rather than hard links: a hard link names the socket inode of one run of the container,
so a container the engine restarts after a crash (a new socket at the same path) would be
unreachable through its slot; a relative symbolic link follows the path. Reading which container
a slot points to is a readlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from flashfit_contract import health as health_fields
from flashfit_ops.config.model import Config
from flashfit_ops.errors import OperationFailed
from flashfit_ops.fileio import atomic_write_text, fsync_dir
from flashfit_ops.monitoring import targets as scrape_targets
from flashfit_ops.plan.common import (
    PROXY_CONFIG_DIR,
    PROXY_CONFIG_FILE,
    SOCKET_DIR,
    backend_socket,
    proxy_dir,
    proxy_name,
    slot_socket,
    sockets_dir,
)

APPLIED_FILE = "applied.json"
# How many container names applied.json remembers as having served.
SERVED_KEPT = 200
CANDIDATE_FILE = "nginx.conf.next"
WORKER = "nginx: worker process"
SHUTTING_DOWN = "nginx: worker process is shutting down"
SOCKETS_MODE = 0o777  # backends (uid 1000) create their sockets in it; nginx (another uid) connects
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


@contextlib.contextmanager
def short_folder(folder: Path) -> Iterator[str]:
    """A name for `folder` short enough for a Unix socket address (at most 107 bytes in all): the
    folder itself, or /proc/self/fd/<n> of an open handle on it when its path is long."""
    if len(os.fsencode(str(folder))) <= 70:
        yield str(folder)
        return
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class ProxyController:
    """Switches the proxy's slots. `backend` is the DockerBackend (or a fake in tests)."""

    def __init__(
        self,
        backend,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        verify_url: str | None = None,
    ):
        self.backend = backend
        self.config = config
        self.folder = proxy_dir(config)
        self.sockets = sockets_dir(config)
        self.name = proxy_name(config.project)
        self.clock = clock
        self.sleep = sleep
        self.verify_url = verify_url or f"http://127.0.0.1:{config.ports.http}{config.healthcheck.liveness_path}"
        # How many times this controller reloaded nginx (only slot-count or config changes do).
        self.reloads = 0

    # -- files ---------------------------------------------------------------------------------
    def ensure_folders(self) -> None:
        """The proxy folder, and the sockets folder writable by the backends' user (uid 1000):
        created here, before a container bind-mounts it (the engine would create it root-owned)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(parents=True, exist_ok=True)
        if stat.S_IMODE(self.sockets.stat().st_mode) != SOCKETS_MODE:
            os.chmod(self.sockets, SOCKETS_MODE)

    def render(self, count: int) -> str:
        from flashfit_ops.render import render_nginx

        return render_nginx(
            self.config,
            [slot_address(n) for n in range(1, count + 1)],
            tls=self.config.tls.enabled,
            keepalive=False,
            standby=[f"unix:{SOCKET_DIR}/{standby_socket(n)}" for n in range(1, count + 1)],
        )

    def slot_count(self, replicas: int, live_text: str | None) -> int:
        """The slots to list for `replicas` containers when the plan did not say: the current
        count while it holds them and deploy.max_replicas (no reload), else enough for them."""
        current = parse_slot_count(live_text) if live_text else 0
        return max(current, self.config.deploy.max_replicas, replicas)

    def slots(self) -> tuple[str, ...]:
        """What the slots nginx.conf lists point to now."""
        return read_files(self.folder, self.sockets).config

    def link(self, slot: int, name: str, file_name: str | None = None) -> None:
        """Point `slot` (or the link `file_name`) at container `name`: a new link renamed over the
        old one (atomic)."""
        file_name = file_name or slot_socket(slot)
        path = self.sockets / file_name
        tmp = self.sockets / f"{file_name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(backend_socket(name), tmp)
        os.replace(tmp, path)

    def link_all(self, slots: tuple[str, ...], count: int, standby: tuple[str, ...] = ()) -> int:
        """Link slots 1..count over `slots` and the standby slots over `standby` (empty: over
        `slots`); only links that change are renamed. Returns how many changed."""
        changed = 0
        for file_name, targets in ((slot_socket, slots), (standby_socket, standby or slots)):
            for n, name in enumerate(assign_slots(tuple(targets), count), start=1):
                if slot_target(self.sockets, n, file_name(n)) != name:
                    self.link(n, name, file_name(n))
                    changed += 1
        return changed

    def link_standby(self, standby: tuple[str, ...], count: int) -> None:
        """Point only the standby slots at `standby` (the monitor window closed clean)."""
        self.ensure_folders()
        for n, name in enumerate(assign_slots(tuple(standby), count), start=1):
            if slot_target(self.sockets, n, standby_socket(n)) != name:
                self.link(n, name, standby_socket(n))
        fsync_dir(self.sockets)

    def current_count(self) -> int:
        try:
            return parse_slot_count((self.folder / PROXY_CONFIG_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, UnicodeDecodeError):
            return 0

    def write_live(self, slots: tuple[str, ...], slot_count: int = 0, standby: tuple[str, ...] = ()) -> None:
        """Link the slots and write nginx.conf directly (the proxy is not running yet)."""
        if not slots:
            raise OperationFailed("refusing to start the proxy with no replica slots")
        self.ensure_folders()
        count = slot_count or max(self.config.deploy.max_replicas, len(slots))
        self.link_all(tuple(slots), count, standby)
        self._drop_slots_after(count)
        fsync_dir(self.sockets)
        atomic_write_text(self.folder / PROXY_CONFIG_FILE, self.render(count))

    def record_applied(self, slots: tuple[str, ...], standby: tuple[str, ...] = ()) -> None:
        text = (self.folder / PROXY_CONFIG_FILE).read_bytes()
        slots = distinct(slots)
        served = [n for n in (read_files(self.folder, self.sockets).served or ()) if n not in slots] + list(slots)
        record = {
            "slots": list(slots),
            "standby": list(distinct(standby or slots)),
            "served": served[-SERVED_KEPT:],
            "config_sha256": hashlib.sha256(text).hexdigest(),
            "applied_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.folder / APPLIED_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
        scrape_targets.on_switch(self.config, slots)  # Prometheus follows the slots

    def clean(self, files: tuple[str, ...]) -> None:
        for name in files:
            folder = self.sockets if name.startswith("slot-") else self.folder
            try:
                (folder / name).unlink()
            except FileNotFoundError:
                pass

    def forget(self, container: str) -> None:
        """Remove a removed container's socket file (a clean exit removes it already)."""
        try:
            (self.sockets / backend_socket(container)).unlink()
        except FileNotFoundError:
            pass

    def _drop_slots_after(self, count: int) -> None:
        for slot in slot_links(self.sockets):
            if slot > count:
                (self.sockets / slot_socket(slot)).unlink(missing_ok=True)
        if self.sockets.is_dir():
            for entry in self.sockets.glob("slot-standby-*.sock"):
                number = entry.name[len("slot-standby-") : -len(".sock")]
                if number.isdigit() and int(number) > count:
                    entry.unlink(missing_ok=True)

    # -- nginx -----------------------------------------------------------------------------------
    def test_config(self, file_name: str) -> None:
        code, output = self.backend.exec(self.name, ["nginx", "-t", "-q", "-c", f"{PROXY_CONFIG_DIR}/{file_name}"])
        if code != 0:
            raise OperationFailed(
                "nginx rejected the new configuration; traffic stays where it was",
                hint="see the nginx message above",
                details={"nginx": output.strip()[-2000:]},
            )

    def config_is_valid(self) -> bool:
        code, _ = self.backend.exec(self.name, ["nginx", "-t", "-q", "-c", f"{PROXY_CONFIG_DIR}/{PROXY_CONFIG_FILE}"])
        return code == 0

    def workers(self) -> dict[int, str]:
        return {pid: cmd.strip() for pid, cmd in self.backend.processes(self.name) if cmd.strip().startswith(WORKER)}

    def switch(
        self,
        slots: tuple[str, ...],
        versions: dict[str, str] | None = None,
        *,
        force_reload: bool = False,
        slot_count: int = 0,
        standby: tuple[str, ...] = (),
    ) -> None:
        """Point the slots at the containers `slots` (they cycle over `slot_count` slots; 0: see
        `slot_count()`) and the standby slots at `standby` (empty: at `slots`). nginx is reloaded
        only when nginx.conf must change (more slots, other settings), or with `force_reload` (a
        restore, after every backend was down). `versions` ({container: version}) are checked
        through a slot of each container and through the proxy."""
        slots = distinct(tuple(slots))
        if not slots:
            raise OperationFailed("refusing to switch the proxy to no replica slots")
        self.ensure_folders()
        missing = [n for n in distinct((*slots, *standby)) if not _is_socket(self.sockets / backend_socket(n))]
        if missing:
            raise OperationFailed(
                f"{', '.join(missing)} does not listen on {SOCKET_DIR}/<container>.sock; traffic stays where it was",
                hint="the image must serve on $FLASHFIT_SOCKET as well as on port 8080 (images built before the socket "
                "switch do not): deploy a newer build",
            )
        try:
            live_text: str | None = (self.folder / PROXY_CONFIG_FILE).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            live_text = None
        count = slot_count or self.slot_count(len(slots), live_text)
        wanted = self.render(count)
        reload = force_reload or live_text != wanted
        candidate = self.folder / CANDIDATE_FILE
        if reload:
            atomic_write_text(candidate, wanted)
            try:
                self.test_config(CANDIDATE_FILE)
            except BaseException:
                candidate.unlink(missing_ok=True)
                raise
        self.link_all(slots, count, tuple(standby))
        fsync_dir(self.sockets)
        if reload:
            before = {pid for pid, cmd in self.workers().items() if cmd == WORKER}
            os.replace(candidate, self.folder / PROXY_CONFIG_FILE)
            fsync_dir(self.folder)
            code, output = self.backend.exec(self.name, ["nginx", "-s", "reload", "-c", f"{PROXY_CONFIG_DIR}/{PROXY_CONFIG_FILE}"])
            if code != 0:
                raise OperationFailed("nginx refused to reload", details={"nginx": output.strip()[-2000:]})
            self._wait_new_generation(before)
            self.reloads += 1
        self._drop_slots_after(count)
        self.verify(slots, versions or {})
        self.record_applied(slots, tuple(standby))

    def _wait_new_generation(self, before: set[int], timeout: float = 15.0) -> None:
        deadline = self.clock() + timeout
        delay = 0.01
        while True:
            current = self.workers()
            active = {pid for pid, cmd in current.items() if cmd == WORKER}
            if active - before and not (active & before):
                return
            if self.clock() >= deadline:
                raise OperationFailed(
                    f"nginx did not start a new worker generation within {timeout:g}s after the reload",
                    hint=f"see `docker logs {self.name}`",
                )
            self.sleep(delay)
            delay = min(delay * 2, 0.1)

    def verify(self, slots: tuple[str, ...], versions: dict[str, str], timeout: float = 10.0) -> None:
        """A request through every slot link (it reaches the container it should, which answers
        with its version), then one through the proxy on a fresh connection."""
        import httpx

        path = self.config.healthcheck.liveness_path
        deadline = self.clock() + timeout
        pending = list(enumerate(distinct(slots), start=1))  # slot n links to the n-th container
        last = ""
        while True:
            while pending:
                n, name = pending[0]
                with short_folder(self.sockets) as folder:
                    problem = _check(
                        lambda: httpx.Client(transport=httpx.HTTPTransport(uds=f"{folder}/{slot_socket(n)}"), timeout=2.0),
                        f"http://slot-{n}{path}",
                        versions.get(name),
                    )
                if problem:
                    last = f"slot-{n} -> {name}: {problem}"
                    break
                pending.pop(0)
            if not pending:
                only = versions.get(slots[0]) if len(set(slots)) == 1 else None
                problem = _check(lambda: httpx.Client(timeout=2.0, headers={"Connection": "close"}), self.verify_url, only)
                if not problem:
                    return
                last = f"{self.verify_url}: {problem}"
            if self.clock() >= deadline:
                raise OperationFailed(f"the proxy does not serve the new slots after the switch ({last})")
            self.sleep(0.05)

    def wait_serving(self, timeout: float = 20.0) -> None:
        self.verify_proxy(timeout)

    def verify_proxy(self, timeout: float) -> None:
        import httpx

        deadline = self.clock() + timeout
        while True:
            problem = _check(lambda: httpx.Client(timeout=2.0, headers={"Connection": "close"}), self.verify_url, None)
            if not problem:
                return
            if self.clock() >= deadline:
                raise OperationFailed(f"the proxy does not serve {self.verify_url} ({problem})")
            self.sleep(0.05)


def _check(make_client: Callable, url: str, version: str | None) -> str | None:
    """None when `url` answers 2xx (with `version`, when given); else what was wrong."""
    import httpx

    try:
        with make_client() as client:
            response = client.get(url)
    except httpx.HTTPError as error:
        return type(error).__name__
    if not 200 <= response.status_code < 300:
        return f"HTTP {response.status_code}"
    if version is not None:
        try:
            served = response.json().get(health_fields.VERSION)
        except (ValueError, AttributeError):
            served = None
        if served != version:
            return f"serves version {served!r}, not {version!r}"
    return None
