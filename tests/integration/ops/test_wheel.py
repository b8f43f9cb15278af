"""The templates ship inside the wheel: an installed flashfit renders without a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO_ROOT)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("flashfit-*.whl")
    return path


def test_wheel_holds_templates_and_example(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "flashfit_ops/templates/nginx/nginx.conf.j2" in names
    assert "flashfit_ops/templates/docker/Dockerfile.j2" in names
    assert "flashfit_ops/config/example.yml" in names
    assert not any(name.startswith("tests/") for name in names)


def test_installed_package_renders_from_its_own_templates(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import flashfit_ops.render as r, sys\n"
        "print(r.template_dir())\n"
        "from flashfit_ops.cli import main\n"
        "sys.argv = ['flashfit', 'init', 'flashfit.yml']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "sys.argv = ['flashfit', 'render', '--out', 'out']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    # The extracted wheel comes first on the path, so the checkout's copy is never imported.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(site / "flashfit_ops" / "templates")
    assert (work / "out" / "nginx.conf").is_file()
