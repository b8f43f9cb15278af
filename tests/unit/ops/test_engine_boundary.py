"""The Docker engine boundary (flashfit_ops/engine): one mapper from SDK and socket errors to
flashfit's own, and one place that makes a client. (That only the engine package imports the
SDK is a rule of tests/unit/test_layering.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from docker import errors as sdk

from flashfit_ops.engine.errors import ENGINE_HINT, engine_errors
from flashfit_ops.errors import EXIT_FAILED, EXIT_UNAVAILABLE, OperationFailed, UsageError

PACKAGE = Path(__file__).resolve().parents[3] / "flashfit_ops"


def test_a_refused_request_fails_with_the_engines_own_words() -> None:
    with pytest.raises(OperationFailed) as caught, engine_errors("building demo/app:v1 failed"):
        raise sdk.APIError("500 Server Error for http+docker://localhost/build", explanation="no space left on device")
    assert caught.value.message == "building demo/app:v1 failed: no space left on device"
    assert caught.value.exit_code == EXIT_FAILED


@pytest.mark.parametrize(
    "error",
    [
        sdk.DockerException("Error while fetching server API version: ('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))"),
        requests.exceptions.ConnectionError("HTTPConnectionPool: Max retries exceeded (Connection refused)"),
        requests.exceptions.ReadTimeout("UnixHTTPConnectionPool(host='localhost', port=None): Read timed out."),
    ],
)
def test_an_engine_that_does_not_answer_is_unavailable_with_the_hint(error: Exception) -> None:
    from flashfit_ops.errors import Unavailable

    with pytest.raises(Unavailable) as caught, engine_errors("listing containers"):
        raise error
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    assert caught.value.message.startswith("the Docker engine is unreachable: ")
    assert caught.value.hint == ENGINE_HINT


@pytest.mark.parametrize("error", [sdk.NotFound("No such container: x"), sdk.ImageNotFound("No such image: y")])
def test_not_found_passes_through_for_the_caller_to_ask(error: Exception) -> None:
    with pytest.raises(type(error)), engine_errors("inspecting"):
        raise error


@pytest.mark.parametrize("error", [UsageError("bad version"), ValueError("a bug, not the engine")])
def test_other_errors_pass_through_untouched(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, engine_errors("anything"):
        raise error
    assert caught.value is error


def test_from_env_is_called_in_one_place() -> None:
    callers = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py")) if "docker.from_env(" in p.read_text()]
    assert callers == ["flashfit_ops/engine/connect.py"]
