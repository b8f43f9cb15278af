"""Shared test helpers. A component a test needs that is missing FAILS the test: CI must never
pass by skipping (see .ci/run, which installs every component)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run (or apt-get install the package providing it)")
    return path


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """The commented example that `flashfit init` writes, in a fresh folder."""
    from flashfit_ops.config.example import write_example

    path = tmp_path / "flashfit.yml"
    write_example(path)
    return path


# The files that take longest, started first: `make test` hands whole files to parallel workers
# (pytest-xdist --dist loadfile --no-loadscope-reorder), and a long file picked up last would
# leave the other workers idle at the end. Every other file keeps its collection order.
LONGEST_FIRST = (
    "tests/integration/ops/cluster/test_catalog_nodes.py",
    "tests/integration/ops/cluster/test_multinode.py",
    "tests/integration/ops/test_swarm.py",
    "tests/integration/ops/test_deploy_faults.py",
    "tests/integration/ops/test_self_healing.py",
    "tests/integration/ops/test_monitoring.py",
    "tests/integration/ops/test_deploy_warm_standby.py",
    "tests/integration/ops/test_deploy_single_rolling.py",
    "tests/integration/ops/test_images_build.py",
    "tests/server/integration/test_schemathesis.py",
    "tests/integration/ops/test_backup_deployed.py",
    "tests/integration/ops/test_doctor_live.py",
    "tests/integration/ops/test_deploy_blue_green.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests inside a file keep their order


CLUSTER_TESTS = "tests/integration/ops/cluster/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile`, with every file under tests/integration/ops/cluster/ on one worker, one
    after the other: each brings up a 3-node cluster (the session's, or test_catalog_nodes.py's
    in-memory one), and two clusters at once starved a 2-core CI host."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ClusterTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return CLUSTER_TESTS if scope.startswith(CLUSTER_TESTS) else scope

    return ClusterTogether(config, log)
