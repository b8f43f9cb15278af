"""The seam around a restore: stop the server, swap the data, start it, wait until it is ready.

`ServiceControl` is what the restore needs from whoever runs the server. The Docker one, for a
stack `flashfit deploy` runs, is flashfit_ops.backup.deployed.DockerServiceControl (stop/start the
backend containers, readiness through the deploy engine's health gate, under the deploy lock).
`NoServiceControl` is used when nothing is deployed: every step is a no-op, and the CLI refuses to
use it while something answers on the backend port, so data is never swapped under a live server.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ServiceControl(Protocol):
    name: str

    def stop(self) -> None:
        """Stop every process that reads or writes the data folder; return when they are gone."""

    def start(self) -> None:
        """Start the server again on whatever is now in the data folder."""

    def wait_ready(self, timeout: float) -> None:
        """Return once the server answers ready; raise (any FlashFitError) if not within timeout."""


class NoServiceControl:
    name = "none"

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> None:
        pass


def server_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether anything answers HTTP at url (used to refuse a restore under a running server)."""
    import httpx

    try:
        httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True
