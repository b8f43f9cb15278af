"""One way to reach the Docker engine. `connect()` returns a docker SDK client, or raises
Unavailable (exit 3) with a hint when the engine does not answer.

The SDK is imported inside the function so that importing this module (and `flashfit --help`)
stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flashfit_ops.errors import Unavailable

if TYPE_CHECKING:  # pragma: no cover
    import docker

DEFAULT_TIMEOUT = 10.0
ENGINE_HINT = (
    "start the Docker engine (`sudo systemctl start docker`, or scripts/ensure-docker.sh where there is "
    "no systemd) and check DOCKER_HOST; `docker info` must work"
)


def connect(timeout: float = DEFAULT_TIMEOUT) -> "docker.DockerClient":
    """A client for the engine named by the environment (DOCKER_HOST & co.), API version negotiated.

    `timeout` bounds connecting and each plain request; long streams (builds, pulls) pass their own."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(version="auto", timeout=timeout)
        client.ping()
    except DockerException as error:
        raise Unavailable(f"the Docker engine is unreachable: {_reason(error)}", hint=ENGINE_HINT) from None
    except OSError as error:  # requests/urllib3 connection errors are OSErrors too
        raise Unavailable(f"the Docker engine is unreachable: {error}", hint=ENGINE_HINT) from None
    return client


def _reason(error: Exception) -> str:
    text = str(error)
    # The SDK nests the socket error deep inside; its last clause is the readable part.
    for marker in ("Connection refused", "No such file or directory", "Permission denied", "timed out"):
        if marker in text:
            return marker.lower()
    return text if len(text) < 200 else text[:197] + "..."
