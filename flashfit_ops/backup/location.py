"""Where the server's data folder is on this host: `data_location(config)`.

volumes.data is a host path (starts with / or .; resolved against the config folder) or a Docker
volume name. For a volume we ask the engine for its Mountpoint (we run as root on the engine's
host); Compose prefixes volumes with its project name, so `<project>_<name>` and the compose
labels are tried too. The engine is reached through flashfit_ops.engine (connect, and its error
mapper: an engine that does not answer is Unavailable, exit 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flashfit_ops.engine.protocol import EngineClient
from flashfit_ops.errors import UsageError

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config


def is_host_path(source: str) -> bool:
    return source.startswith(("/", "."))


def data_location(config: Config, client: EngineClient | None = None) -> Path:
    source = config.volumes.data
    if is_host_path(source):
        return config.resolve_path(source)
    return volume_mountpoint(source, config.project, client)


def volume_mountpoint(name: str, project: str, client: EngineClient | None = None) -> Path:
    from flashfit_ops.engine.connect import connect
    from flashfit_ops.engine.errors import NotFound, engine_errors

    client = client or connect()
    with engine_errors(f"the Docker engine would not say where volume {name!r} lives"):
        for candidate in (name, f"{project}_{name}"):
            try:
                return Path(client.volumes.get(candidate).attrs["Mountpoint"])
            except NotFound:
                continue
        labelled = client.volumes.list(filters={"label": [f"com.docker.compose.volume={name}",
                                                           f"com.docker.compose.project={project}"]})
        if labelled:
            return Path(labelled[0].attrs["Mountpoint"])
    raise UsageError(f"the Docker volume {name!r} does not exist (nor {project}_{name})",
                     hint="deploy first, or `docker volume create` it, or set volumes.data to a host path")
