"""The one way to reach the Docker engine: `connect()` returns the SDK client as an EngineClient,
or raises Unavailable (exit 3) with a hint when the engine does not answer. Every module that
talks to the engine gets its client from here (or is handed one); none calls the SDK's from_env.

The SDK is imported inside the function so that importing this module (and `flashfit --help`)
stays cheap."""

from __future__ import annotations

from flashfit_ops.engine.errors import unreachable
from flashfit_ops.engine.protocol import EngineClient

# Per request. A busy engine (an image push or extraction on the same disk) can take well over
# 10 s to create, stop or remove a container; failing then would abort a deploy half-way for no
# fault. 60 s is the SDK's and Compose's own default. An engine that is down still fails at once
# (connection refused, no socket).
DEFAULT_TIMEOUT = 60.0


def connect(timeout: float = DEFAULT_TIMEOUT) -> EngineClient:
    """A client for the engine named by the environment (DOCKER_HOST & co.), API version negotiated.

    `timeout` bounds connecting and each plain request; long streams (builds, pulls) pass their own."""
    import docker
    from docker.errors import DockerException

    try:
        client: EngineClient = docker.from_env(version="auto", timeout=timeout)
        client.ping()
    except (DockerException, OSError) as error:  # requests/urllib3 connection errors are OSErrors too
        raise unreachable(error) from None
    return client
