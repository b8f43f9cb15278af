"""The keeper: a tiny process in its own container (`<project>-keeper`) that keeps something
serving while no flashfit command runs: it fails a killed or stopped live backend over to a warm
spare, and starts the proxy and every backend a slot links to again when they stopped.

Why it exists: the restart policy (`unless-stopped`) restarts a process that crashed, but the
engine treats `docker kill` and `docker stop` as an operator's wish and leaves the container down
(measured on Docker 20.10: a killed container stays exited, RestartCount 0).

How fast: it follows the engine's event stream (`GET /events`, this project's containers, kill /
die / stop), so it acts within milliseconds of a `docker stop` (the `kill` event with SIGTERM
comes first, while the container still reads "running"); every INTERVAL it also looks at every
container, for whatever an event did not say (the keeper itself was down, the stream broke).

Failover (deploy.spare_replicas): a spare is a ready container the standby slots link to and no
slot does. When a container some slot links to is going away, those slots are relinked to a
spare (atomic rename, as the executor does) and the standby slots that linked to the spare are
relinked to the dead one, which is then started again and becomes the next spare: roles swap, no
model is loaded while nothing serves. applied.json follows, so `flashfit status` reads the truth,
and so does Prometheus's scrape targets file when monitoring is on (written after the relinks; a
failed write is retried, never blocks).
Without a spare, the dead container is started again the moment it has exited.

It never fights flashfit: while the deploy lock is held (a deploy, rollback, restore, stop,
down), it does nothing; a drained container is no longer linked from any slot, so it is never
restarted; `flashfit stop` and `down` stop or remove the keeper first.

Standard library only (it runs in the live backend's image, as root to reach the engine's socket,
which is mounted read-write; the project's state folder is mounted read-only, its sockets and
proxy folders read-write for the relinks, and the scrape targets folder when monitoring is on).
Not imported by flashfit itself: the executor mounts this file into the container, and
monitoring/filesd.py beside it (the one maker of the targets document).
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import os
import queue
import re
import socket
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone

if __package__:  # imported as part of flashfit (its tests)
    from flashfit_ops.monitoring import filesd
else:  # the keeper's container: flashfit_ops/monitoring/filesd.py is mounted beside this script
    import flashfit_filesd as filesd  # type: ignore[import-not-found, no-redef]

ENGINE = os.environ.get("KEEPER_ENGINE_SOCKET", "/var/run/docker.sock")
STATE = os.environ.get("KEEPER_STATE_DIR", "/flashfit")
PROJECT = os.environ.get("KEEPER_PROJECT", "")
PROXY = os.environ.get("KEEPER_PROXY", "")
INTERVAL = float(os.environ.get("KEEPER_INTERVAL", "0.5"))
READY_PATH = os.environ.get("KEEPER_READY_PATH", "/ready")
# Prometheus's scrape targets file (writable here); empty when monitoring is off.
TARGETS = os.environ.get("KEEPER_TARGETS", "")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def engine(method: str, path: str) -> tuple[int, bytes]:
    connection = UnixConnection(ENGINE)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def lock_held() -> bool:
    """The deploy lock: a file its holder keeps an exclusive flock on (removed on release)."""
    try:
        fd = os.open(os.path.join(STATE, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken at once
    return False


# -- the slot links (see flashfit_ops/execute/proxy.py) ------------------------------------------------
SOCKETS = "sockets"
_PRIMARY = re.compile(r"^slot-(\d+)\.sock$")
_STANDBY = re.compile(r"^slot-standby-(\d+)\.sock$")


def links() -> tuple[dict[str, str], dict[str, str]]:
    """({slot file: container} for the slots, the same for the standby slots), by file name."""
    folder = os.path.join(STATE, SOCKETS)
    primary: dict[str, str] = {}
    standby: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return primary, standby
    for entry in entries:
        table = primary if _PRIMARY.match(entry) else standby if _STANDBY.match(entry) else None
        if table is None:
            continue
        try:
            target = os.path.basename(os.readlink(os.path.join(folder, entry)))
        except OSError:
            continue
        if target.endswith(".sock"):
            table[entry] = target[: -len(".sock")]
    return primary, standby


def routed() -> set[str]:
    """Containers a slot or standby slot links to (`slot-<n>.sock` -> `<container>.sock`)."""
    primary, standby = links()
    return set(primary.values()) | set(standby.values())


def relink(file_name: str, container: str) -> None:
    """Point a slot link at `container`: a new link renamed over the old one (atomic)."""
    folder = os.path.join(STATE, SOCKETS)
    tmp = os.path.join(folder, f"{file_name}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(f"{container}.sock", tmp)
    os.replace(tmp, os.path.join(folder, file_name))


def ready(container: str) -> bool:
    """The container answers its readiness path on its own socket (the path nginx reaches it by)."""
    connection = UnixConnection(os.path.join(STATE, SOCKETS, f"{container}.sock"), timeout=1.0)
    try:
        connection.request("GET", READY_PATH, headers={"Connection": "close"})
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _slot_order(item: tuple[str, str]) -> int:
    return int(re.sub(r"\D", "", item[0]) or 0)


def record(primary: dict[str, str], standby: dict[str, str]) -> None:
    """applied.json follows a failover (the slots, the standby slots, who served), so `flashfit
    status` and repair read what nginx routes to. Atomic: a new file renamed over the old one."""
    path = os.path.join(STATE, "proxy", "applied.json")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    slots = list(dict.fromkeys(name for _, name in sorted(primary.items(), key=_slot_order)))
    served = [n for n in data.get("served", []) if isinstance(n, str) and n not in slots] + slots
    data.update(
        slots=slots,
        standby=list(dict.fromkeys(name for _, name in sorted(standby.items(), key=_slot_order))),
        served=served[-200:],
        applied_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        applied_by="keeper",
    )
    tmp = os.path.join(STATE, "proxy", f".applied.json.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


_targets_error = ""


def sync_targets() -> None:
    """Prometheus scrapes exactly the containers the slots link to: after a failover the spare,
    no longer the dead one (whose `down` would page about a replica already replaced). Checked on
    every pass and written only when it differs, so a write that failed (printed once) is retried;
    called after the relinks, never before, so it can never hold a failover up."""
    global _targets_error
    if not TARGETS:
        return
    primary, _ = links()
    if not primary:  # no slot read (the folder is going away): leave the file alone
        return
    try:
        if filesd.write(TARGETS, PROJECT, [name for _, name in sorted(primary.items(), key=_slot_order)]):
            print(f"keeper: scrape targets now {', '.join(dict.fromkeys(primary.values()))}", flush=True)
        _targets_error = ""
    except OSError as error:
        if str(error) != _targets_error:
            print(f"keeper: could not write the scrape targets ({error}); retrying", file=sys.stderr, flush=True)
        _targets_error = str(error)


def fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fail_over(dead: str, states: dict[str, str]) -> str | None:
    """Relink every slot that links to `dead` to a ready spare, and the standby slots that linked
    to that spare to `dead` (started again later, it becomes the next spare). The spare, or None
    when there is none ready."""
    primary, standby = links()
    if dead not in primary.values():
        return None
    live = set(primary.values())
    spares = [n for n in dict.fromkeys(standby.values()) if n not in live and n != dead and states.get(n) == "running"]
    spare = next((n for n in spares if ready(n)), None)
    if spare is None:
        return None
    for file_name, name in primary.items():
        if name == dead:
            relink(file_name, spare)
            primary[file_name] = spare
    for file_name, name in standby.items():
        if name == spare:
            relink(file_name, dead)
            standby[file_name] = dead
    fsync_folder(os.path.join(STATE, SOCKETS))
    record(primary, standby)
    return spare


# -- the engine --------------------------------------------------------------------------------------
def states() -> dict[str, str]:
    """{container name: state} of every container of the project."""
    query = urllib.parse.quote(json.dumps({"label": [f"io.flashfit.project={PROJECT}"]}))
    status, body = engine("GET", f"/containers/json?all=1&filters={query}")
    if status != 200:
        raise OSError(f"engine answered {status}")
    out = {}
    for container in json.loads(body):
        name = (container.get("Names") or ["/"])[0].lstrip("/")
        out[name] = str(container.get("State", ""))
    return out


# Signals that end a container: `docker stop` sends TERM (the event comes before it exits).
ENDING_SIGNALS = {"2", "3", "9", "15"}


def watch_events(events: queue.Queue[str]) -> None:
    """Put the name of every project container the engine kills, stops or sees die on `events`,
    reconnecting when the stream breaks. A thread: the main loop waits on the queue."""
    filters = {"type": ["container"], "label": [f"io.flashfit.project={PROJECT}"], "event": ["kill", "die", "stop"]}
    path = "/events?filters=" + urllib.parse.quote(json.dumps(filters))
    while True:
        connection = UnixConnection(ENGINE, timeout=None)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            if response.status != 200:
                raise OSError(f"engine answered {response.status} to /events")
            while True:
                line = response.readline()
                if not line:
                    raise OSError("the engine closed the event stream")
                event = json.loads(line)
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                if event.get("Action") == "kill" and attributes.get("signal") not in ENDING_SIGNALS:
                    continue
                events.put(str(attributes.get("name", "")))
        except (OSError, ValueError, http.client.HTTPException) as error:
            print(f"keeper: event stream: {error}", file=sys.stderr, flush=True)
            time.sleep(INTERVAL)
        finally:
            connection.close()


def heal(going: set[str]) -> None:
    """One pass: fail over away from linked containers that are going (`going`, from events) or
    down, then start again every linked container and the proxy that are down."""
    current = states()
    primary, _ = links()
    down = {n for n in primary.values() if current.get(n) != "running"}
    for name in sorted((going & set(primary.values())) | down):
        if lock_held():
            return
        spare = fail_over(name, current)
        if spare is not None:
            print(f"keeper: {name} is going away: its slots now link to the spare {spare}", flush=True)
    if not lock_held():  # (a command that started meanwhile owns the file)
        sync_targets()  # after the relinks: traffic first, monitoring second
    wanted = routed() | {PROXY}
    # Backends first, then the proxy.
    for name in sorted((n for n in wanted if current.get(n) in ("exited", "created")), key=lambda n: n == PROXY):
        if lock_held():  # a command started meanwhile: it is in charge
            return
        status, _ = engine("POST", f"/containers/{name}/start")
        print(f"keeper: {name} was down: started it again ({status})", flush=True)


def main() -> int:
    if not PROJECT or not PROXY:
        print("keeper: KEEPER_PROJECT and KEEPER_PROXY are required", file=sys.stderr)
        return 2
    print(f"keeper: watching {PROJECT} (proxy {PROXY}): engine events, and every {INTERVAL:g}s", flush=True)
    events: queue.Queue[str] = queue.Queue()
    threading.Thread(target=watch_events, args=(events,), daemon=True, name="events").start()
    while True:
        going: set[str] = set()
        try:
            going.add(events.get(timeout=INTERVAL))
            while True:  # everything that arrived together
                going.add(events.get_nowait())
        except queue.Empty:
            pass
        try:
            if not lock_held():
                heal(going)
        except (OSError, ValueError, http.client.HTTPException) as error:
            print(f"keeper: {error}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
