"""The 3-node cluster, once per test session (about 12 s up and 4 s down once its images exist;
building them the first time takes about 2 minutes, then they are reused by a hash of their
Dockerfiles). Torn down whatever happens, by name and by label."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.ops.cluster.cluster import Cluster, running
from tests.integration.ops.fake_backend.harness import ensure_flashfit_images


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    ensure_flashfit_images()  # the nodes and the registry are built FROM the project's base
    # A CI timeout sends SIGTERM: turn it into an exception so the teardown below still runs.
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    started = time.monotonic()
    with running(nodes=3) as cluster:
        print(f"\n3-node cluster {cluster.prefix} up in {time.monotonic() - started:.1f}s")
        yield cluster
    signal.signal(signal.SIGTERM, previous)
