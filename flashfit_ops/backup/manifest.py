"""The manifest of one backup: what it holds and where each file's content lives.

{
  "format": 1, "id": "20250101T120000Z-1a2b3c4d", "time": "2025-01-01T12:00:00+00:00",
  "tag": null, "server_version": "0.1.0" | null, "flashfit_version": "0.1.0",
  "source": "server-snapshot" | "data-folder", "host": "...", "project": "flashfit",
  "files": [{"path": "data/clip.json", "size": 123, "sha256": "<hex>", "blob": "<hex>",
             "compression": "zstd" | "none", "stored_size": 80, "mode": 420, "encryption": null}]
}

Paths start with data/ (the data folder), config/ (flashfit.yml and rendered files) or secrets/
(the env file, always encrypted; its sha256 is null so the manifest leaks nothing about it, and
its blob is named by the hash of the ciphertext). A plain blob is named by the SHA-256 of the
uncompressed content, so equal content is stored once whatever its path.
"""

from __future__ import annotations

import json
import re
import secrets as _secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeGuard

from flashfit_ops.backup.paths import UnsafePath, check_relpath
from flashfit_ops.errors import IntegrityFailure

FORMAT = 1
MANIFEST_PREFIX = "snapshots/"
BLOB_PREFIX = "blobs/"
LOCK_PREFIX = "locks/"
ROOTS = ("data", "config", "secrets")
COMPRESSIONS = ("zstd", "none")

_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_BLOB_KEY = re.compile(r"^blobs/([0-9a-f]{2})/([0-9a-f]{64})(\.zst)?$")
_ENTRY_KEYS = {"path", "size", "sha256", "blob", "compression", "stored_size", "mode", "encryption"}
# Linux NAME_MAX; whole paths stay well under PATH_MAX (4096) with the restore folder in front.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 2048
# Free text a manifest carries (tag, host...): shown in listings, so bounded and on one line.
MAX_TEXT = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The most a restored file may allow: nobody but the owner writes (a manifest cannot widen modes).
MAX_MODE = {"data": 0o755, "config": 0o755, "secrets": 0o600}


class ManifestError(IntegrityFailure):
    """A manifest that is unreadable or that asks for something unsafe; nothing is restored."""


def new_backup_id(now: datetime | None = None) -> str:
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{_secrets.token_hex(4)}"


def is_backup_id(value: str) -> bool:
    return bool(_ID.match(value))


def manifest_key(backup_id: str) -> str:
    return f"{MANIFEST_PREFIX}{backup_id}.json"


def id_from_manifest_key(key: str) -> str | None:
    if not key.startswith(MANIFEST_PREFIX) or not key.endswith(".json"):
        return None
    candidate = key[len(MANIFEST_PREFIX) : -len(".json")]
    return candidate if is_backup_id(candidate) else None


def blob_key(blob: str, compression: str) -> str:
    """Where a blob lives; the suffix says how it is stored, so an existing blob is self-describing."""
    if not _SHA.match(blob) or compression not in COMPRESSIONS:
        raise ValueError(f"bad blob {blob!r}/{compression!r}")
    return f"{BLOB_PREFIX}{blob[:2]}/{blob}{'.zst' if compression == 'zstd' else ''}"


def parse_blob_key(key: str) -> tuple[str, str] | None:
    """(blob, compression) for a blob key, None for anything else (temporary files, strays)."""
    match = _BLOB_KEY.match(key)
    if not match or match.group(1) != match.group(2)[:2]:
        return None
    return match.group(2), ("zstd" if match.group(3) else "none")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str | None
    blob: str
    compression: str
    stored_size: int
    mode: int = 0o644
    encryption: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return blob_key(self.blob, self.compression)

    @property
    def root(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def restored_mode(self) -> int:
        """The recorded mode without what a restore never grants (write for others, any bit on secrets)."""
        return self.mode & MAX_MODE.get(self.root, 0o755)

    @property
    def relative(self) -> str:
        """The path below its root (data/clip.json -> clip.json)."""
        return self.path.split("/", 1)[1]


@dataclass
class Manifest:
    id: str
    time: datetime
    files: list[FileEntry]
    tag: str | None = None
    server_version: str | None = None
    flashfit_version: str | None = None
    source: str = "data-folder"
    host: str | None = None
    project: str | None = None
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)

    def keys(self) -> set[str]:
        return {entry.key for entry in self.files}

    def entries(self, root: str) -> list[FileEntry]:
        return [entry for entry in self.files if entry.root == root]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "time": self.time.astimezone(timezone.utc).isoformat(),
            "tag": self.tag,
            "server_version": self.server_version,
            "flashfit_version": self.flashfit_version,
            "source": self.source,
            "host": self.host,
            "project": self.project,
            **({"extra": self.extra} if self.extra else {}),
            "files": [asdict(entry) for entry in sorted(self.files, key=lambda e: e.path)],
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time.astimezone(timezone.utc).isoformat(),
            "tag": self.tag,
            "source": self.source,
            "server_version": self.server_version,
            "files": len(self.files),
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: bytes, *, expected_id: str | None = None) -> Manifest:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest {expected_id or ''} is not valid JSON: {exc}".replace("  ", " ")) from None
        return cls.from_dict(raw, expected_id=expected_id)

    @classmethod
    def from_dict(cls, raw: Any, *, expected_id: str | None = None) -> Manifest:
        name = expected_id or "?"
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest {name} is not a JSON object")
        if raw.get("format") != FORMAT:
            raise ManifestError(
                f"manifest {name} has format {raw.get('format')!r}; this flashfit reads format {FORMAT}",
                hint="use the flashfit version that wrote it",
            )
        backup_id = raw.get("id")
        if not isinstance(backup_id, str) or not is_backup_id(backup_id):
            raise ManifestError(f"manifest {name} has a bad id {backup_id!r}")
        if expected_id is not None and backup_id != expected_id:
            raise ManifestError(f"manifest {expected_id} claims to be {backup_id}")
        try:
            when = datetime.fromisoformat(str(raw.get("time")))
        except ValueError:
            raise ManifestError(f"manifest {backup_id} has a bad time {raw.get('time')!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        files_raw = raw.get("files")
        if not isinstance(files_raw, list):
            raise ManifestError(f"manifest {backup_id} has no file list")
        problems: list[str] = []
        entries = [entry for index, item in enumerate(files_raw) if (entry := _entry(item, index, problems))]
        problems.extend(_layout_problems(entries))
        problems.extend(_text_problems(raw))
        if problems:
            raise ManifestError(
                f"manifest {backup_id} is unsafe or damaged: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                hint="nothing was restored; this backup cannot be trusted",
                details={"problems": problems},
            )

        def text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) else None

        return cls(
            id=backup_id,
            time=when,
            files=entries,
            tag=text("tag"),
            server_version=text("server_version"),
            flashfit_version=text("flashfit_version"),
            source=text("source") or "data-folder",
            host=text("host"),
            project=text("project"),
            extra=raw["extra"] if isinstance(raw.get("extra"), dict) else {},
        )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(item: Any, index: int, problems: list[str]) -> FileEntry | None:
    if not isinstance(item, dict):
        problems.append(f"entry {index} is not an object")
        return None
    label = repr(item.get("path", f"#{index}"))
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        # e.g. "type": "symlink" or "link": "/etc/passwd": only regular files are ever restored.
        problems.append(f"{label}: unsupported fields {sorted(unknown)} (only regular files are restored)")
        return None
    try:
        path = check_relpath(item.get("path"))
    except UnsafePath as exc:
        problems.append(f"path {label} {exc}")
        return None
    if path.split("/", 1)[0] not in ROOTS or "/" not in path:
        problems.append(f"path {label} is outside {', '.join(r + '/' for r in ROOTS)}")
        return None
    long = _name_problem(path)
    if long:
        problems.append(f"path {label} {long}")
        return None
    if path.startswith("secrets/") and path.count("/") != 1:
        problems.append(f"path {label}: an env file is stored as secrets/<name>, without folders")
        return None
    mode = item.get("mode", 0o644)
    if not _is_int(mode) or not 0 <= mode <= 0o777:
        problems.append(f"{label}: mode {mode!r} is not plain permission bits (device files, setuid are refused)")
        return None
    size, stored = item.get("size"), item.get("stored_size")
    if not _is_int(size) or size < 0 or not _is_int(stored) or stored < 0:
        problems.append(f"{label}: bad size")
        return None
    blob, sha, compression = item.get("blob"), item.get("sha256"), item.get("compression")
    encryption = item.get("encryption")
    if not isinstance(blob, str) or not _SHA.match(blob):
        problems.append(f"{label}: bad blob id {blob!r}")
        return None
    if compression not in COMPRESSIONS:
        problems.append(f"{label}: unknown compression {compression!r}")
        return None
    if encryption is None:
        if not isinstance(sha, str) or not _SHA.match(sha) or sha != blob:
            problems.append(f"{label}: sha256 and blob id disagree")
            return None
    elif not isinstance(encryption, dict) or sha is not None or compression != "none":
        problems.append(f"{label}: bad encryption record")
        return None
    return FileEntry(path, size, sha, blob, compression, stored, mode, encryption)


def _name_problem(path: str) -> str | None:
    """Why `path` cannot be created on a Linux filesystem (or shown on one line), else None."""
    if _CONTROL.search(path):
        return "contains a control character"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in path.split("/")):
        return f"has a name longer than {MAX_NAME_BYTES} bytes (too long for the filesystem)"
    return None


def config_file_name(value: Any) -> str | None:
    """The flashfit.yml name recorded in `extra`: a plain file name, never a path. Raises ValueError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"the config file name {value!r} is not a string")
    try:
        check_relpath(value)
    except UnsafePath as exc:
        raise ValueError(f"the config file name {value[:80]!r} {exc}") from None
    problem = "is a path, not a file name" if "/" in value else _name_problem(value)
    if problem:
        raise ValueError(f"the config file name {value[:80]!r} {problem}")
    return value


def _text_problems(raw: dict[str, Any]) -> list[str]:
    """Names and labels outside the file list: the config file name is used by --apply-config."""
    problems = []
    extra = raw.get("extra")
    if extra is not None and not isinstance(extra, dict):
        problems.append("extra is not an object")
        extra = {}
    try:
        config_file_name((extra or {}).get("config_file"))
    except ValueError as exc:
        problems.append(str(exc))
    texts = {key: raw.get(key) for key in ("tag", "server_version", "flashfit_version", "source", "host", "project")}
    texts.update({f"extra.{key}": value for key, value in (extra or {}).items() if isinstance(value, str)})
    for key, value in texts.items():
        if isinstance(value, str) and (len(value) > MAX_TEXT or _CONTROL.search(value)):
            problems.append(f"{key} is longer than {MAX_TEXT} characters or holds control characters")
    return problems


def _layout_problems(entries: list[FileEntry]) -> list[str]:
    problems = []
    paths = {entry.path for entry in entries}
    if len(paths) != len(entries):
        seen: set[str] = set()
        for entry in entries:
            if entry.path in seen:
                problems.append(f"path {entry.path!r} appears twice")
            seen.add(entry.path)
    for path in paths:
        parts = path.split("/")
        for cut in range(1, len(parts)):
            prefix = "/".join(parts[:cut])
            if prefix in paths:
                problems.append(f"path {prefix!r} is both a file and a folder")
    return problems
