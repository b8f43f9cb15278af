"""Small seams: URL parsing, retries, JWT, snapshot response, data location."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from flashfit_ops.backup.location import data_location
from flashfit_ops.backup.snapshot import make_jwt, parse_snapshot_response
from flashfit_ops.backup.store import LocalStore, Transient, parse_target, with_retries
from flashfit_ops.config.load import resolve
from flashfit_ops.errors import EXIT_USAGE, UsageError


def test_parse_target(tmp_path: Path) -> None:
    local = parse_target("file://./backups", tmp_path)
    assert local.scheme == "file" and local.path == tmp_path / "backups"
    assert parse_target("file:///srv/b", tmp_path).path == Path("/srv/b")
    s3 = parse_target("s3://my-bucket/flashfit/prod/", tmp_path)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "flashfit/prod/")
    assert parse_target("s3://my-bucket", tmp_path).prefix == ""


@pytest.mark.parametrize("url", ["http://x", "s3://", "s3://UPPER/x", "s3://a/x", "file://", "/plain/path", "s3://b-b/a//c"])
def test_bad_urls_exit_2(url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        parse_target(url, tmp_path)
    assert caught.value.exit_code == EXIT_USAGE


def test_with_retries_backs_off_then_gives_up() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient("503")
        return "ok"

    assert with_retries(flaky, attempts=4, base=0.5, sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]

    def always() -> None:
        raise Transient("503")

    with pytest.raises(Transient):
        with_retries(always, attempts=3, base=0.1, sleep=sleeps.append)


def test_jwt_is_standard_hs256() -> None:
    token = make_jwt("k" * 32, {"sub": "x", "exp": 4102444800})
    head, body, sig = token.split(".")
    expected = hmac.new(b"k" * 32, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "==") == expected
    assert json.loads(base64.urlsafe_b64decode(body + "==")) == {"exp": 4102444800, "sub": "x"}
    import jwt  # the server's library accepts it

    assert jwt.decode(token, "k" * 32, algorithms=["HS256"])["sub"] == "x"


def test_snapshot_response_of_the_server(tmp_path: Path) -> None:
    body = {"format": "flashfit-snapshot/1", "app_version": "1.2.3",
            "files": [{"path": "clip.json", "size": 3, "sha256": "a" * 64}]}
    result = parse_snapshot_response(body, tmp_path, "_snapshots/x")
    assert result.folder == tmp_path / "_snapshots/x" and result.server_version == "1.2.3"
    assert result.files[0].path == "clip.json"


def test_data_location_host_path_and_volume(tmp_path: Path) -> None:
    config = resolve({"volumes": {"data": "./data"}}, base_dir=tmp_path, environ={})
    assert data_location(config) == tmp_path / "data"

    class Volume:
        attrs = {"Mountpoint": "/var/lib/docker/volumes/flashfit_vector_indices/_data"}

    class Volumes:
        def get(self, name: str) -> Volume:
            from docker.errors import NotFound

            if name != "flashfit_vector_indices":
                raise NotFound("no")
            return Volume()

    class Client:
        volumes = Volumes()

    named = resolve({}, base_dir=tmp_path, environ={})
    assert data_location(named, Client()) == Path("/var/lib/docker/volumes/flashfit_vector_indices/_data")


def test_local_store_writes_whole_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    store.check(create=True)
    store.put_bytes("snapshots/x.json", b"{}")
    (tmp_path / "b" / "snapshots" / ".tmp-deadbeef").write_bytes(b"half")  # an interrupted write
    assert store.list("snapshots/") == {"snapshots/x.json": 2}
    with pytest.raises(Exception):
        store.put_bytes("../escape", b"x")
