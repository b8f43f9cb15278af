"""Where the server's data folder is on this host: `data_location(config)`.

volumes.data is a host path (starts with / or .; resolved against the config folder) or a Docker
volume name. For a volume we ask the engine for its Mountpoint (we run as root on the engine's
host); Compose prefixes volumes with its project name, so `<project>_<name>` and the compose
labels are tried too. The Docker SDK is imported here, lazily, so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashfit_ops.errors import Unavailable, UsageError

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config


def is_host_path(source: str) -> bool:
    return source.startswith(("/", "."))


def data_location(config: Config, docker_client: Any = None) -> Path:
    source = config.volumes.data
    if is_host_path(source):
        return config.resolve_path(source)
    return volume_mountpoint(source, config.project, docker_client)


def volume_mountpoint(name: str, project: str, client: Any = None) -> Path:
    try:
        import docker
        from docker.errors import DockerException, NotFound
    except ImportError:  # pragma: no cover - docker is a dependency
        raise Unavailable("the Docker SDK is not installed") from None
    try:
        client = client or docker.from_env()
        for candidate in (name, f"{project}_{name}"):
            try:
                return Path(client.volumes.get(candidate).attrs["Mountpoint"])
            except NotFound:
                continue
        labelled = client.volumes.list(filters={"label": [f"com.docker.compose.volume={name}",
                                                           f"com.docker.compose.project={project}"]})
        if labelled:
            return Path(labelled[0].attrs["Mountpoint"])
    except DockerException as exc:
        raise Unavailable(f"cannot ask the Docker engine where volume {name!r} lives: {exc}",
                          hint="start Docker, or set volumes.data to a host path") from None
    raise UsageError(f"the Docker volume {name!r} does not exist (nor {project}_{name})",
                     hint="deploy first, or `docker volume create` it, or set volumes.data to a host path")
