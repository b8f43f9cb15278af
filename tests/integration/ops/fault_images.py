"""Fault images built on top of a real server image, for the deploy tests and the benchmarks: the
real server, with a thin entry point that kills it on cue. Built from a throwaway context; the
base image's own command runs underneath, unchanged.

`crash_after_switch_image(client, server_image, seconds)`: the server is SIGKILLed `seconds`
after traffic was switched to its container (a replica slot link in /run/flashfit names its
socket), as a version that passes the gate and then crashes inside the monitor window would."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CRASH_SCRIPT = r'''
"""Runs the server; SIGKILLs it CRASH_AFTER_SWITCH seconds after a slot links to this container."""
import os, signal, subprocess, sys, time

after = float(os.environ["CRASH_AFTER_SWITCH"])
socket_path = os.environ.get("FLASHFIT_SOCKET", "")
folder, own = os.path.dirname(socket_path), os.path.basename(socket_path)
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))  # a drain stays graceful


def switched() -> bool:
    try:
        names = [n for n in os.listdir(folder) if n.startswith("slot-") and n[5:-5].isdigit() and n.endswith(".sock")]
        return any(os.readlink(os.path.join(folder, n)) == own for n in names)
    except OSError:
        return False


while child.poll() is None and not (own and switched()):
    time.sleep(0.02)
if child.poll() is None:
    time.sleep(after)
    if child.poll() is None:
        print(f"crash-after-switch: killing the server {after:g}s after traffic switched to it", flush=True)
        child.kill()
        child.wait()
        sys.exit(137)
sys.exit(child.wait())
'''


def crash_after_switch_image(client: Any, server_image: str, seconds: float, tag: str) -> str:
    """Build `tag`: `server_image` whose server is killed `seconds` after the switch to it."""
    base = client.images.get(server_image)
    command = base.attrs["Config"].get("Cmd") or []
    entry = base.attrs["Config"].get("Entrypoint") or []
    with tempfile.TemporaryDirectory(prefix="flashfit-fault-") as folder:
        (Path(folder) / "crash_after_switch.py").write_text(CRASH_SCRIPT)
        (Path(folder) / "Dockerfile").write_text(
            f"FROM {server_image}\n"
            "COPY crash_after_switch.py /opt/crash_after_switch.py\n"
            f"ENV CRASH_AFTER_SWITCH={seconds:g}\n"
            # Setting ENTRYPOINT clears the base image's CMD: name it again.
            f'ENTRYPOINT ["python", "/opt/crash_after_switch.py"]\n'
            f"CMD {json.dumps([*entry, *command])}\n"
        )
        client.images.build(path=folder, tag=tag, rm=True)
    return tag
