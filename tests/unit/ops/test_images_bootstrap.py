"""Bootstrap recipes and root filesystem slimming (pure file work, no Docker, no debootstrap)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flashfit_ops.errors import UsageError
from flashfit_ops.images import bootstrap as boot


def test_recipe_key_is_stable_and_follows_what_shapes_the_filesystem() -> None:
    mirror = "http://deb.debian.org/debian"
    key = boot.BASE.key(mirror)
    assert key == boot.BASE.key(mirror + "/") and len(key) == 12
    assert boot.BASE.key("http://other/debian") != key
    assert dataclasses.replace(boot.BASE, packages=("python3",)).key(mirror) != key
    assert boot.PROXY.key(mirror) != key
    # The tag is not part of the key: a test tag reuses the cached root filesystem.
    assert dataclasses.replace(boot.BASE, image="flashfit-test/x:y").key(mirror) == key
    assert dataclasses.replace(boot.BASE, image="flashfit-test/x:y").tarball_name(key) == boot.BASE.tarball_name(key)


def test_import_changes_give_the_imported_image_a_usable_config() -> None:
    base = boot.BASE.import_changes("k1")
    assert f"ENV PATH={boot.STANDARD_PATH}" in base
    assert "LABEL io.flashfit.recipe=k1" in base
    assert base[-1] == 'CMD ["python3"]'
    proxy = boot.PROXY.import_changes("k2")
    assert proxy[-1] == 'CMD ["nginx", "-g", "daemon off;"]' and "EXPOSE 80" in proxy


def test_debootstrap_command_is_minbase_with_the_recipe_packages(tmp_path: Path) -> None:
    command = boot.debootstrap_command(boot.BASE, tmp_path / "root", "http://m/debian", tmp_path / "debs")
    assert command[0] == boot.DEBOOTSTRAP
    assert "--variant=minbase" in command
    assert "--include=python3,python3-venv,ca-certificates" in command
    assert f"--cache-dir={tmp_path / 'debs'}" in command
    assert command[-3:] == ["bookworm", str(tmp_path / "root"), "http://m/debian"]


def make_rootfs(root: Path) -> None:
    files = {
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "x",
        "var/cache/apt/pkgcache.bin": "x",
        "var/cache/apt/archives/python3_3.11.deb": "x",
        "usr/share/doc/python3/copyright": "GPL",
        "usr/share/doc/python3/changelog.Debian.gz": "x",
        "usr/share/doc/nocopyright/README": "x",
        "usr/share/man/man1/python3.1.gz": "x",
        "usr/share/locale/de/LC_MESSAGES/apt.mo": "x",
        "usr/share/locale/locale.alias": "alias",
        "var/log/dpkg.log": "x",
        "var/log/apt/history.log": "x",
        "debootstrap/debootstrap.log": "x",
        "etc/resolv.conf": "nameserver 10.0.0.1",
        "etc/hostname": "buildhost",
        "usr/bin/python3": "#!",
        "etc/nginx/mime.types": "types {}",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "var/lib/apt/lists/partial").mkdir()


def test_slimming_removes_lists_caches_docs_and_host_files(tmp_path: Path) -> None:
    make_rootfs(tmp_path)
    boot.slim_rootfs(tmp_path)
    assert [p.name for p in (tmp_path / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert not (tmp_path / "var/cache/apt/pkgcache.bin").exists()
    assert not list((tmp_path / "var/cache/apt/archives").glob("*.deb"))
    assert (tmp_path / "usr/share/doc/python3/copyright").read_text() == "GPL", "licences stay"
    assert not (tmp_path / "usr/share/doc/python3/changelog.Debian.gz").exists()
    assert not (tmp_path / "usr/share/doc/nocopyright").exists()
    assert not list((tmp_path / "usr/share/man").rglob("*.gz"))
    assert [p.name for p in (tmp_path / "usr/share/locale").iterdir()] == ["locale.alias"]
    assert not (tmp_path / "var/log/dpkg.log").exists() and (tmp_path / "var/log/apt").is_dir()
    assert not (tmp_path / "debootstrap").exists()
    assert (tmp_path / "etc/resolv.conf").read_text() == "" and (tmp_path / "etc/hostname").read_text() == ""
    assert (tmp_path / "usr/bin/python3").exists()
    assert "path-exclude /usr/share/doc/*" in (tmp_path / "etc/dpkg/dpkg.cfg.d/flashfit-slim").read_text()
    assert "Install-Recommends" in (tmp_path / "etc/apt/apt.conf.d/90flashfit-slim").read_text()


def test_the_proxy_logs_to_stdout_and_stderr(tmp_path: Path) -> None:
    make_rootfs(tmp_path)
    (tmp_path / "var/log/nginx").mkdir(parents=True)
    (tmp_path / "var/log/nginx/access.log").write_text("old")
    boot.finish_rootfs(tmp_path, boot.PROXY)
    assert str((tmp_path / "var/log/nginx/access.log").readlink()) == "/dev/stdout"
    assert str((tmp_path / "var/log/nginx/error.log").readlink()) == "/dev/stderr"


def test_remove_tree_deletes_a_plain_tree(tmp_path: Path) -> None:
    make_rootfs(tmp_path / "work")
    assert boot._mounts_below(tmp_path / "work") == []
    boot._remove_tree(tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("flashfit/debian-python:bookworm", ("flashfit/debian-python", "bookworm")),
        ("nginx", ("nginx", "latest")),
        ("registry:5000/team/app", ("registry:5000/team/app", "latest")),
        ("registry:5000/team/app:1.2", ("registry:5000/team/app", "1.2")),
    ],
)
def test_split_reference(reference: str, expected: tuple[str, str]) -> None:
    assert boot.split_reference(reference) == expected


def test_unknown_image_names_are_refused_before_touching_docker(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown image redis"):
        boot.bootstrap(object(), tmp_path, which=["redis"])  # type: ignore[arg-type]
