"""The client of the server's snapshot endpoint: a small seam.

POST {server}/api/admin/snapshot {"dest": "<folder relative to the data folder>"} with a Bearer
JWT (HS256, JWT_SECRET_KEY). The server writes a consistent copy of its vector stores into that
folder and answers with a manifest of the files (path, size, sha256). When no server answers, the
engine reads the data folder directly instead, except on a deployed stack: there
backup.deployed.DeployedSnapshotter asks the containers and the proxy, and refuses (exit 3) when
none answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flashfit_ops.errors import OperationFailed, Unavailable

SNAPSHOT_PATH = "/api/admin/snapshot"
# Folders inside the data folder that hold snapshots: never backed up as live data.
SNAPSHOT_DIRS = frozenset({"_snapshots", ".snapshots", "snapshots"})
# The server accepts plain names only (no leading dot), see flashfit_server.snapshot.resolve_dest.
SNAPSHOT_ROOT = "_snapshots"
# Parts of the data folder a server snapshot covers: taken from the snapshot, never from live files.
# (The SQLite catalogue's -wal/-shm belong to the live file: beside the snapshot's copy they
# would corrupt it.)
SNAPSHOT_COVERS_SUFFIXES = (".index", ".seg", ".sqlite3-wal", ".sqlite3-shm")
SNAPSHOT_COVERS_DIRS = ("images", "segments")


@dataclass
class SnapshotFile:
    path: str
    size: int
    sha256: str


@dataclass
class SnapshotResult:
    folder: Path  # where the server wrote the files (inside the data folder)
    files: list[SnapshotFile]
    server_version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    via: str | None = None  # which server answered (a container, the proxy, a URL)


class Snapshotter(Protocol):
    def snapshot(self, data_dir: Path, dest: str) -> SnapshotResult | None:
        """A snapshot in data_dir/dest, or None when no server is running."""


class NoSnapshot:
    """Used with --no-server: always read the data folder directly."""

    def snapshot(self, data_dir: Path, dest: str) -> SnapshotResult | None:
        return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret: str, claims: dict[str, Any]) -> str:
    """HS256 JWT (RFC 7519) without a third-party dependency."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def admin_token(secret: str, ttl: int = 300) -> str:
    now = int(time.time())
    return make_jwt(secret, {"sub": "flashfit-ops", "role": "admin", "scope": "admin", "iat": now, "exp": now + ttl})


class HttpSnapshotter:
    def __init__(self, base_url: str, jwt_secret: str | None, timeout: float = 600.0, transport: Any = None):
        self.base_url = base_url.rstrip("/")
        self.jwt_secret = jwt_secret
        self.timeout = timeout
        self.transport = transport

    def snapshot(self, data_dir: Path, dest: str) -> SnapshotResult | None:
        import httpx

        headers = {}
        if self.jwt_secret:
            headers["Authorization"] = f"Bearer {admin_token(self.jwt_secret)}"
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=3.0), transport=self.transport) as client:
                response = client.post(f"{self.base_url}{SNAPSHOT_PATH}", json={"dest": dest}, headers=headers)
        except httpx.ConnectError:
            return None  # nothing listens: the server is not running
        except httpx.HTTPError as exc:
            raise Unavailable(f"the server at {self.base_url} did not answer the snapshot request: {exc}",
                              hint="check the server, or pass --no-server to read the data folder directly") from None
        if response.status_code in (401, 403):
            raise Unavailable(f"the server at {self.base_url} refused the snapshot request ({response.status_code})",
                              hint="JWT_SECRET_KEY here must match the server's (env file or environment)")
        if response.status_code in (502, 503, 504):
            # The server is still loading (503), or the proxy in front of it has no backend answering.
            raise Unavailable(f"the server at {self.base_url} is not available for a snapshot: HTTP {response.status_code}",
                              hint="wait until it is ready (`flashfit status`), or pass --no-server to read the data folder directly")
        if response.status_code >= 400:
            raise OperationFailed(f"the server's snapshot failed: HTTP {response.status_code} {response.text[:200]}",
                                  hint="pass --no-server to read the data folder directly (stop the server first)")
        try:
            body = response.json()
        except ValueError:
            raise OperationFailed(f"the server at {self.base_url} answered the snapshot request with HTTP "
                                  f"{response.status_code} and no JSON (is it a FlashFit server?)") from None
        snap = parse_snapshot_response(body, data_dir, dest, response.headers.get("x-server-version"))
        snap.via = self.base_url
        return snap


def parse_snapshot_response(body: Any, data_dir: Path, dest: str, header_version: str | None = None) -> SnapshotResult:
    if not isinstance(body, dict):
        raise OperationFailed("the server's snapshot answer is not a JSON object")
    items = body.get("files")
    if items is None and isinstance(body.get("manifest"), dict):
        items = body["manifest"].get("files")
    if not isinstance(items, list):
        raise OperationFailed("the server's snapshot answer has no file list")
    files = []
    for item in items:
        try:
            files.append(SnapshotFile(str(item["path"]), int(item["size"]), str(item["sha256"])))
        except (KeyError, TypeError, ValueError):
            raise OperationFailed(f"the server's snapshot answer has a bad entry: {item!r}") from None
    version = body.get("app_version") or body.get("server_version") or body.get("version") or header_version
    folder = body.get("dest") or dest
    return SnapshotResult(data_dir / str(folder), files, str(version) if version else None, body)
