"""Requirements pinning: the server extra's closure over installed distributions, pinned exactly."""

from __future__ import annotations

import importlib.metadata as metadata
import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from flashfit_ops.errors import UsageError
from flashfit_ops.images import wheelhouse as wh
from flashfit_ops.images.wheelhouse import Pin, resolve_pins

INSTALLED = {
    "web": ("2.0", ["core>=1", "extra-thing; extra == 'fancy'", "winonly; sys_platform == 'win32'", "pip"]),
    "core": ("1.5", ["tiny", "old; python_version < '3.8'"]),
    "tiny": ("0.1", []),
    "extra-thing": ("3.3", ["tiny"]),
    "winonly": ("9.9", []),
    "old": ("0.0.1", []),
    "torch": ("2.13.0+cpu", ["setuptools>=77"]),
    "setuptools": ("84.2.1", []),
}


def fake(name: str):
    return INSTALLED.get(name, (None, None))


def resolve(*roots: str) -> list[str]:
    pins = resolve_pins(
        [Requirement(r) for r in roots],
        lambda n: fake(n)[1],
        lambda n: fake(n)[0],
    )
    return [p.line() for p in pins]


def test_closure_follows_dependencies_and_evaluates_markers_for_the_target() -> None:
    assert resolve("web>=1") == ["core==1.5", "tiny==0.1", "web==2.0"]


def test_extras_of_a_requirement_pull_in_their_dependencies() -> None:
    assert resolve("web[fancy]") == ["core==1.5", "extra-thing==3.3", "tiny==0.1", "web==2.0"]


def test_local_versions_and_runtime_setuptools_are_pinned_exactly() -> None:
    assert resolve("torch==2.13.0") == ["setuptools==84.2.1", "torch==2.13.0+cpu"]


def test_a_missing_distribution_is_a_usage_error_naming_who_needs_it() -> None:
    with pytest.raises(UsageError) as caught:
        resolve("web", "absent>=1")
    assert "absent>=1 (needed by flashfit)" in caught.value.message
    assert "pip install" in caught.value.hint


def test_an_installed_version_outside_the_specifier_is_refused() -> None:
    with pytest.raises(UsageError, match="core 1.5 is installed but flashfit needs core>=2"):
        resolve("core>=2")


def test_the_real_server_extra_excludes_base_and_test_dependencies() -> None:
    names = {r.name for r in wh.extra_requirements()}
    assert {"torch", "fastapi", "faiss-cpu", "transformers", "uvicorn"} <= names
    assert "boto3" in names  # the server itself follows the shared catalogue log in S3
    assert not names & {"pytest", "hypothesis", "moto", "docker"}


def test_real_pins_match_the_venv_and_leave_out_dev_tools() -> None:
    pins = {p.name: p.version for p in wh.server_pins()}
    assert pins["torch"] == metadata.version("torch")
    assert pins["fastapi"] == metadata.version("fastapi")
    assert "uvloop" in pins, "uvicorn[standard] brings its extras"
    assert pins["boto3"] == metadata.version("boto3") and pins["botocore"] == metadata.version("botocore")
    assert not set(pins) & {"pytest", "hypothesis", "moto", "docker", "pip", "flashfit"}


def test_requirements_text_is_sorted_pins_with_a_header() -> None:
    text = wh.requirements_text([Pin("a", "1", "x"), Pin("b", "2.0+cpu", "x")])
    assert text.splitlines()[-2:] == ["a==1", "b==2.0+cpu"]
    assert all(line.startswith("#") for line in text.splitlines()[:-2])


def test_pip_download_asks_for_binary_wheels_for_cp311_manylinux() -> None:
    command = wh.pip_download_command(Path("/r.txt"), Path("/out"), python="py")
    assert command[:4] == ["py", "-m", "pip", "download"]
    assert "--only-binary=:all:" in command and "--no-deps" in command
    joined = " ".join(command)
    assert "--python-version 3.11" in joined and "--abi cp311" in joined and "--implementation cp" in joined
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert "manylinux_2_36_x86_64" in platforms and "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms and not any("linux_x86_64" == p for p in platforms)


def test_wheel_names_are_matched_to_pins_by_canonical_name_and_version() -> None:
    pins = {"faiss-cpu": "1.15.1", "torch": "2.13.0+cpu"}
    assert wh.wheel_matches("faiss_cpu-1.15.1-cp310-abi3-manylinux_2_28_x86_64.whl", pins)
    assert wh.wheel_matches("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", pins)
    assert not wh.wheel_matches("faiss_cpu-1.14.0-cp310-abi3-manylinux_2_28_x86_64.whl", pins)
    assert not wh.wheel_matches("not-a-wheel.txt", pins)


def test_stamp_vouches_only_for_the_same_requirements_and_intact_wheels(tmp_path: Path) -> None:
    text = "a==1\n"
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"12345")
    stamp = {**wh._stamp_payload(text), "wheels": {"a-1-py3-none-any.whl": 5}}
    (tmp_path / wh.STAMP).write_text(json.dumps(stamp))
    assert wh.stamp_is_current(tmp_path, text) == ["a-1-py3-none-any.whl"]
    assert wh.stamp_is_current(tmp_path, "a==2\n") is None
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"1234")
    assert wh.stamp_is_current(tmp_path, text) is None
    (tmp_path / wh.STAMP).write_text("{broken")
    assert wh.stamp_is_current(tmp_path, text) is None


def test_a_current_stamp_skips_pip_entirely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = [Pin("a", "1", "flashfit")]
    text = wh.requirements_text(pins)
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"12345")
    (tmp_path / wh.REQUIREMENTS).write_text(text)
    (tmp_path / wh.STAMP).write_text(json.dumps({**wh._stamp_payload(text), "wheels": {"a-1-py3-none-any.whl": 5}}))

    def no_pip(*_args, **_kwargs):
        raise AssertionError("pip must not run when the stamp matches")

    monkeypatch.setattr(wh.subprocess, "Popen", no_pip)
    result = wh.make_wheelhouse(tmp_path, pins=pins)
    assert result.reused and result.wheels == ["a-1-py3-none-any.whl"] and result.size_bytes == 5
