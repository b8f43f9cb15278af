"""The keeper: a tiny process in its own container (`<project>-keeper`) that starts the proxy and
every backend a slot links to again when it stopped while no flashfit command runs.

Why it exists: the restart policy (`unless-stopped`) restarts a process that crashed, but the
engine treats `docker kill` and `docker stop` as an operator's wish and leaves the container down
(measured on Docker 20.10: a killed container stays exited, RestartCount 0). The keeper brings
them back within about a second, without an operator.

It never fights flashfit: while the deploy lock is held (a deploy, rollback, restore, stop,
down), it does nothing; a drained container is no longer linked from any slot, so it is never
restarted; `flashfit stop` and `down` stop or remove the keeper first.

Standard library only (it runs in the live backend's image, as root to reach the engine's socket,
which is mounted read-write; the project's state folder is mounted read-only). Not imported by
flashfit itself: the executor mounts this file into the container.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse

ENGINE = os.environ.get("KEEPER_ENGINE_SOCKET", "/var/run/docker.sock")
STATE = os.environ.get("KEEPER_STATE_DIR", "/flashfit")
PROJECT = os.environ.get("KEEPER_PROJECT", "")
PROXY = os.environ.get("KEEPER_PROXY", "")
INTERVAL = float(os.environ.get("KEEPER_INTERVAL", "0.5"))


class EngineConnection(http.client.HTTPConnection):
    def __init__(self) -> None:
        super().__init__("engine", timeout=10)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(ENGINE)


def engine(method: str, path: str) -> tuple[int, bytes]:
    connection = EngineConnection()
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


def routed() -> set[str]:
    """Containers the slot links name (`slot-<n>.sock` -> `<container>.sock`)."""
    folder = os.path.join(STATE, "sockets")
    names: set[str] = set()
    try:
        entries = os.listdir(folder)
    except OSError:
        return names
    for entry in entries:
        if entry.startswith("slot-") and entry.endswith(".sock"):
            try:
                target = os.path.basename(os.readlink(os.path.join(folder, entry)))
            except OSError:
                continue
            if target.endswith(".sock"):
                names.add(target[: -len(".sock")])
    return names


def stopped_to_start() -> list[str]:
    query = urllib.parse.quote(json.dumps({"label": [f"io.flashfit.project={PROJECT}"]}))
    status, body = engine("GET", f"/containers/json?all=1&filters={query}")
    if status != 200:
        raise OSError(f"engine answered {status}")
    wanted = routed() | {PROXY}
    out = []
    for container in json.loads(body):
        name = (container.get("Names") or ["/"])[0].lstrip("/")
        if name in wanted and container.get("State") in ("exited", "created"):
            out.append(name)
    return sorted(out, key=lambda n: n == PROXY)  # backends first, then the proxy


def main() -> int:
    if not PROJECT or not PROXY:
        print("keeper: KEEPER_PROJECT and KEEPER_PROXY are required", file=sys.stderr)
        return 2
    print(f"keeper: watching {PROJECT} (proxy {PROXY}) every {INTERVAL:g}s", flush=True)
    while True:
        try:
            if not lock_held():
                for name in stopped_to_start():
                    if lock_held():  # a command started meanwhile: it is in charge
                        break
                    status, body = engine("POST", f"/containers/{name}/start")
                    print(f"keeper: {name} was down: started it again ({status})", flush=True)
        except (OSError, ValueError, http.client.HTTPException) as error:
            print(f"keeper: {error}", file=sys.stderr, flush=True)
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
