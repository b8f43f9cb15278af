"""Where a swarm's published ports answer, seen from the machine running flashfit: the manager
that DOCKER_HOST names (tcp://, ssh://), or this host when the engine is local."""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlsplit


def proxy_host(environ: Mapping[str, str] | None = None) -> str:
    remote = urlsplit((os.environ if environ is None else environ).get("DOCKER_HOST", ""))
    if remote.scheme in ("tcp", "ssh", "http", "https") and remote.hostname:
        return remote.hostname
    return "127.0.0.1"
