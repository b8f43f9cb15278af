"""The Docker SDK's request types (Mount, DeviceRequest, ServiceMode, ...), re-exported lazily:
`from flashfit_ops.engine.sdk import Mount` inside a function imports the SDK at that moment, so
the engine package stays the only one that names it and `flashfit --help` never loads it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import docker.types

    try:
        return getattr(docker.types, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
