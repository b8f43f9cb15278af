"""Manifest format, blob naming and path safety: pure logic."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flashfit_ops.backup.blobs import (
    KeyError_,
    compress_bytes,
    copy_decoded,
    decode_bytes,
    decrypt,
    encrypt,
    pays,
    sha256_bytes,
)
from flashfit_ops.backup.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    blob_key,
    id_from_manifest_key,
    is_backup_id,
    manifest_key,
    new_backup_id,
    parse_blob_key,
)
from flashfit_ops.backup.paths import UnsafePath, check_relpath, join_inside
from flashfit_ops.errors import EXIT_INTEGRITY

SHA = sha256_bytes(b"hello")
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def entry(path: str = "data/clip.json", **over: object) -> dict:
    base = {"path": path, "size": 5, "sha256": SHA, "blob": SHA, "compression": "none", "stored_size": 5,
            "mode": 0o644, "encryption": None}
    base.update(over)
    return base


def manifest_doc(*entries: dict) -> dict:
    return {"format": 1, "id": "20250304T050607Z-0123abcd", "time": NOW.isoformat(), "tag": "t",
            "server_version": "1.0", "files": list(entries) or [entry()]}


def test_ids_sort_by_time_and_round_trip_through_keys() -> None:
    first = new_backup_id(NOW)
    later = new_backup_id(NOW.replace(second=8))
    assert is_backup_id(first) and first.startswith("20250304T050607Z-")
    assert first < later
    assert id_from_manifest_key(manifest_key(first)) == first
    assert id_from_manifest_key("snapshots/evil.json") is None
    assert id_from_manifest_key("snapshots/.tmp-123") is None


def test_blob_key_is_sha_named_and_says_how_it_is_stored() -> None:
    assert blob_key(SHA, "none") == f"blobs/{SHA[:2]}/{SHA}"
    assert blob_key(SHA, "zstd") == f"blobs/{SHA[:2]}/{SHA}.zst"
    assert parse_blob_key(blob_key(SHA, "zstd")) == (SHA, "zstd")
    assert parse_blob_key(blob_key(SHA, "none")) == (SHA, "none")
    assert parse_blob_key(f"blobs/zz/{SHA}") is None  # wrong fan-out folder
    assert parse_blob_key(f"blobs/{SHA[:2]}/.tmp-1") is None
    with pytest.raises(ValueError):
        blob_key("not-a-sha", "none")


def test_manifest_round_trip() -> None:
    manifest = Manifest.from_dict(manifest_doc(entry(), entry("config/flashfit.yml")))
    again = Manifest.from_json(manifest.to_json(), expected_id=manifest.id)
    assert again.to_dict() == manifest.to_dict()
    assert again.size == 10 and again.tag == "t" and again.server_version == "1.0"
    assert [e.relative for e in again.entries("data")] == ["clip.json"]
    assert again.keys() == {blob_key(SHA, "none")}


@pytest.mark.parametrize(
    "bad, reason",
    [
        (entry("/etc/passwd"), "absolute"),
        (entry("data//x"), "empty"),
        (entry("data/../../etc/passwd"), "'..'"),
        (entry("data/./x"), "'.'"),
        (entry("data/a\\..\\b"), "backslash"),
        (entry("data/x\x00y"), "NUL"),
        (entry("elsewhere/x"), "outside"),
        (entry("data"), "outside"),
        (entry(type="symlink"), "only regular files"),
        (entry(link="/etc/shadow"), "only regular files"),
        (entry(mode=0o20644), "device"),
        (entry(mode=0o4755), "setuid"),
        (entry(sha256="0" * 64), "disagree"),
        (entry(compression="gzip"), "compression"),
        (entry(size=-1), "size"),
        (entry(blob="../../x"), "blob"),
    ],
)
def test_hostile_or_malformed_entries_are_refused(bad: dict, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(manifest_doc(bad))
    assert caught.value.exit_code == EXIT_INTEGRITY
    assert reason in json.dumps(caught.value.details) + caught.value.message


def test_duplicate_paths_and_file_folder_clashes_are_refused() -> None:
    with pytest.raises(ManifestError, match="twice"):
        Manifest.from_dict(manifest_doc(entry(), entry()))
    with pytest.raises(ManifestError, match="both a file and a folder"):
        Manifest.from_dict(manifest_doc(entry("data/a"), entry("data/a/b")))


def test_manifest_level_damage() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b'{"format": 1, "id": "x"', expected_id="20250304T050607Z-0123abcd")
    with pytest.raises(ManifestError, match="format"):
        Manifest.from_dict({**manifest_doc(), "format": 99})
    with pytest.raises(ManifestError, match="claims"):
        Manifest.from_dict(manifest_doc(), expected_id="20250304T050607Z-ffffffff")


def test_encrypted_entries_carry_no_plaintext_hash() -> None:
    record = {"alg": "AES-256-GCM", "kdf": "raw"}
    ok = Manifest.from_dict(manifest_doc(entry("secrets/.env", sha256=None, encryption=record)))
    assert ok.files[0].sha256 is None
    with pytest.raises(ManifestError):
        Manifest.from_dict(manifest_doc(entry("secrets/.env", encryption=record)))  # a hash would leak


@pytest.mark.parametrize("good", ["clip.json", "images/1.png", ".env", "a/b/c.index", "..x", "x.."])
def test_safe_relpaths(good: str) -> None:
    assert check_relpath(good) == good


@pytest.mark.parametrize("bad", ["", "/abs", "../x", "a/../../x", "a//b", "./a", "a/.", "C:/x", "a\\b", "a\x00"])
def test_unsafe_relpaths(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(bad)


def test_join_inside_refuses_links_in_the_way(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "x")
    assert join_inside(root, "sub/x") == root / "sub" / "x"
    with pytest.raises(UnsafePath, match="link"):
        join_inside(root, "link/x")
    with pytest.raises(UnsafePath, match="not a regular file"):
        join_inside(root, "file-link")
    with pytest.raises(UnsafePath):
        join_inside(root, "../outside/x")


def test_compression_only_when_it_pays() -> None:
    text = b"flashfit " * 10_000
    assert pays(len(text), len(compress_bytes(text)))
    random = bytes(range(256)) * 4 + __import__("os").urandom(100_000)
    assert not pays(len(random), len(compress_bytes(random)))
    assert decode_bytes(compress_bytes(text), "zstd") == text


def test_copy_decoded_stops_at_the_recorded_size() -> None:
    import io

    data = b"x" * 5000
    digest, size = copy_decoded(io.BytesIO(compress_bytes(data)), None, "zstd", limit=100)
    assert size > 100  # detected as too big without decoding everything into memory
    digest, size = copy_decoded(io.BytesIO(data), None, "none", limit=5000)
    assert (digest, size) == (sha256_bytes(data), 5000)


@pytest.mark.parametrize("key", ["ab" * 32, "q" * 43 + "=", "a long enough passphrase"])
def test_encryption_round_trip_and_wrong_key(key: str) -> None:
    if key.startswith("q"):
        import base64

        key = base64.b64encode(b"k" * 32).decode()
    blob, record = encrypt(b"JWT_SECRET_KEY=s3cret\n", key, aad="secrets/.env")
    assert b"s3cret" not in blob
    assert decrypt(blob, key, record, aad="secrets/.env") == b"JWT_SECRET_KEY=s3cret\n"
    with pytest.raises(KeyError_, match="wrong encryption key"):
        decrypt(blob, key, record, aad="secrets/other")
    with pytest.raises(KeyError_):
        decrypt(blob, "another passphrase entirely", record, aad="secrets/.env")


def test_short_passphrase_is_refused() -> None:
    with pytest.raises(KeyError_, match="12 characters"):
        encrypt(b"x", "short", aad="secrets/.env")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"config_file": "../../etc/passwd"}, "climbs out"),
        ({"config_file": "/etc/passwd"}, "is absolute"),
        ({"config_file": "sub/flashfit.yml"}, "is a path, not a file name"),
        ({"config_file": "x" * 256}, "longer than 255 bytes"),
        ({"config_file": 7}, "not a string"),
        ({"config_file": "flash\nfit.yml"}, "control character"),
        ({"data_dir": "/srv/data\x1b[2J"}, "control characters"),
    ],
)
def test_names_beyond_the_file_list_are_checked(extra: dict, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict({**manifest_doc(), "extra": extra})
    assert reason in json.dumps(caught.value.details)
    assert caught.value.exit_code == EXIT_INTEGRITY


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("data/" + "é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8, though 128 characters
        ("data/" + "/".join(["d" * 200] * 11), "longer than 2048 bytes"),
        ("data/a\nb", "control character"),
        ("secrets/nested/.env", "without folders"),
    ],
)
def test_names_the_filesystem_cannot_hold_are_refused(path: str, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(manifest_doc(entry(path)))
    assert reason in json.dumps(caught.value.details, ensure_ascii=False)


def test_restored_modes_never_let_others_write() -> None:
    doc = manifest_doc(entry("data/a", mode=0o777), entry("config/flashfit.yml", mode=0o666), entry("data/b", mode=0o640),
                       entry("secrets/.env", mode=0o644, sha256=None, encryption={"alg": "aes-256-gcm"}))
    modes = {e.path: e.restored_mode for e in Manifest.from_dict(doc).files}
    assert modes == {"data/a": 0o755, "config/flashfit.yml": 0o644, "data/b": 0o640, "secrets/.env": 0o600}
