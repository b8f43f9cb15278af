"""The one mapper from Docker SDK and socket errors to flashfit's errors (errors.py).

    with engine_errors(f"building {image} failed"):
        client.api.build(...)

inside the block
  - a request the engine refused (APIError)        -> OperationFailed  "<refused>: <engine's words>"
  - any other SDK error, a socket or HTTP error      -> Unavailable (exit 3) with ENGINE_HINT
  - NotFound (and ImageNotFound) pass through untouched, so callers can ask "is it there?"
  - anything else (a FlashFitError included) passes through untouched.

The SDK's exception classes are re-exported lazily (`from flashfit_ops.engine.errors import
NotFound` inside a function), so the SDK is imported only by the engine package and only when
an engine is actually asked something."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

from flashfit_ops.errors import FlashFitError, OperationFailed, Unavailable

if TYPE_CHECKING:  # pragma: no cover
    from docker.errors import APIError as APIError
    from docker.errors import DockerException as DockerException
    from docker.errors import ImageNotFound as ImageNotFound
    from docker.errors import NotFound as NotFound

ENGINE_HINT = (
    "start the Docker engine (`sudo systemctl start docker`, or scripts/ensure-docker.sh where there is "
    "no systemd) and check DOCKER_HOST; `docker info` must work"
)
_SDK_ERRORS = ("APIError", "DockerException", "ImageNotFound", "NotFound")


def __getattr__(name: str) -> Any:
    if name in _SDK_ERRORS:
        import docker.errors

        return getattr(docker.errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def explanation(error: BaseException) -> str:
    """What the engine said about a refused request (its `explanation`), else the error's text."""
    return str(getattr(error, "explanation", None) or error)


def unreachable_reason(error: BaseException) -> str:
    text = str(error)
    # The SDK nests the socket error deep inside; its last clause is the readable part.
    for marker in ("Connection refused", "No such file or directory", "Permission denied", "timed out"):
        if marker in text:
            return marker.lower()
    return text if len(text) < 200 else text[:197] + "..."


def unreachable(error: BaseException) -> Unavailable:
    return Unavailable(f"the Docker engine is unreachable: {unreachable_reason(error)}", hint=ENGINE_HINT)


def translate(error: BaseException, refused: str) -> FlashFitError | None:
    """The FlashFitError for an engine error; None when `error` is not one to translate
    (NotFound, a FlashFitError, anything that is not from the SDK or the socket)."""
    if isinstance(error, FlashFitError):
        return None
    import docker.errors

    if isinstance(error, docker.errors.NotFound):
        return None
    if isinstance(error, docker.errors.APIError):
        return OperationFailed(f"{refused}: {explanation(error)}")
    if isinstance(error, (docker.errors.DockerException, OSError)):  # requests' errors are OSErrors
        return unreachable(error)
    return None


@contextlib.contextmanager
def engine_errors(refused: str) -> Iterator[None]:
    """Translate engine errors raised inside the block (see the module's table)."""
    try:
        yield
    except Exception as error:
        mapped = translate(error, refused)
        if mapped is None:
            raise
        raise mapped from None
