"""Where backups live: a local folder or an S3 (or S3-compatible) bucket/prefix.

A store is a flat key -> bytes space with the few operations the engine needs. Writes are
whole-object (a reader never sees half a blob or half a manifest): the local store writes a
temporary file and renames it; S3 PUTs and completed multipart uploads are atomic.

Failures are translated into flashfit errors: a bad URL is a UsageError (exit 2); a missing
bucket, rejected credentials or an unreachable endpoint are Unavailable (exit 3). Transient
errors are retried twice over: botocore's own retries (standard mode) inside each request, and
`with_retries` around each blob transfer with exponential backoff.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, TypeVar

from flashfit_ops.errors import FlashFitError, OperationFailed, Unavailable, UsageError
from flashfit_ops.fileio import fsync_dir

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config, S3Config

OnBytes = Callable[[int], None]
T = TypeVar("T")

MULTIPART_THRESHOLD = 8 * 1024 * 1024  # boto3 defaults per file; several files go in parallel
MULTIPART_CHUNK = 8 * 1024 * 1024
MULTIPART_CONCURRENCY = 10
BOTO_MAX_ATTEMPTS = 5
BLOB_ATTEMPTS = 6
BACKOFF_BASE = 0.5
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectMissing(Exception):
    """A key that is not in the store."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class Transient(Exception):
    """A failure worth retrying (throttling, 5xx, dropped connection, short read)."""


class Store(Protocol):
    url: str

    def check(self, *, create: bool = False) -> None: ...
    def list(self, prefix: str) -> dict[str, int]: ...
    def put_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def delete(self, keys: builtins.list[str]) -> None: ...


def with_retries(func: Callable[[], T], *, attempts: int | None = None, base: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call func; on Transient wait base, 2*base, 4*base... and try again, up to `attempts` times.
    This is on top of botocore's own retries, whose standard mode stops retrying once its retry
    quota is spent (a long run of throttling), so a blob still gets its chances."""
    attempts = BLOB_ATTEMPTS if attempts is None else attempts
    base = BACKOFF_BASE if base is None else base
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except Transient:
            if attempt == attempts:
                raise
            sleep(base * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# --- URLs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scheme: str  # "file" or "s3"
    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_target(url: str, base_dir: Path) -> Target:
    """file://./backups (relative to the config folder), file:///abs, s3://bucket[/prefix]."""
    if url.startswith("file://"):
        rest = url[len("file://") :]
        if not rest:
            raise UsageError(f"bad backup URL {url!r}: no folder", hint="write e.g. file://./backups or file:///srv/backups")
        path = Path(rest).expanduser()
        return Target("file", path=path if path.is_absolute() else (base_dir / path).resolve())
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise UsageError(f"bad backup URL {url!r}: {bucket!r} is not a valid bucket name",
                             hint="write s3://bucket/prefix; bucket names are 3-63 lower-case letters, digits, dots, dashes")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise UsageError(f"bad backup URL {url!r}: the prefix has empty or relative components")
        return Target("s3", bucket=bucket, prefix=f"{prefix}/" if prefix else "")
    raise UsageError(f"bad backup URL {url!r}", hint="use file://FOLDER or s3://BUCKET/PREFIX")


def open_store(url: str, config: Config) -> Store:
    target = parse_target(url, config.base_dir)
    if target.scheme == "file":
        assert target.path is not None
        return LocalStore(target.path)
    from flashfit_ops.config.secrets import load_secrets

    return S3Store(target.bucket or "", target.prefix, config.backup.s3, credentials=load_secrets(config))


# --- local folder -------------------------------------------------------------------------------


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        from flashfit_ops.backup.paths import check_relpath

        return self.root / check_relpath(key)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except FlashFitError:
            raise
        except PermissionError as exc:
            raise Unavailable(f"cannot {what} in {self.root}: permission denied ({exc.filename})") from None
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise OperationFailed(f"no space left on the device holding {self.root} while trying to {what}",
                                      hint="free space there or back up elsewhere with --to") from None
            raise

    def check(self, *, create: bool = False) -> None:
        if self.root.is_dir():
            return
        if self.root.exists():
            raise UsageError(f"backup target {self.root} exists and is not a folder")
        if not create:
            raise Unavailable(f"no backups at {self.root}: the folder does not exist",
                              hint="check backup.target in flashfit.yml or pass --from")
        with self._errors("create the backup folder"):
            self.root.mkdir(parents=True, exist_ok=True)

    def list(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        base = self.root / prefix if prefix.endswith("/") else self.root
        if not base.is_dir():
            return found
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # an interrupted write
                full = Path(folder) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        found[key] = full.stat().st_size
                    except FileNotFoundError:
                        continue
        return found

    def _write(self, key: str, writer: Callable[[Any], None]) -> None:
        dest = self._path(key)
        with self._errors(f"write {key}"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as handle:
                    writer(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(dest.parent)

    def put_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None:
        def copy(handle: Any) -> None:
            with open(path, "rb") as src:
                while block := src.read(1 << 20):
                    handle.write(block)
                    if on_bytes:
                        on_bytes(len(block))

        self._write(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda handle: handle.write(data))

    def get_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None:
        source = self._path(key)
        try:
            src = open(source, "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with src, self._errors(f"write {path}"), open(path, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
                if on_bytes:
                    on_bytes(len(block))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def delete(self, keys: builtins.list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


# --- S3 -------------------------------------------------------------------------------------------

_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
               "InvalidClientTokenId", "InvalidToken", "AuthorizationHeaderMalformed", "403", "Forbidden"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "RequestLimitExceeded"}


class S3Store:
    def __init__(self, bucket: str, prefix: str, settings: S3Config, credentials: dict[str, str] | None = None,
                 max_attempts: int | None = None):
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings
        self.credentials = credentials or {}
        self.max_attempts = BOTO_MAX_ATTEMPTS if max_attempts is None else max_attempts
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client: Any = None

    @property
    def where(self) -> str:
        endpoint = self.settings.endpoint_url or "AWS S3"
        return f"{self.url} at {endpoint}"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig
            from botocore.exceptions import BotoCoreError

            try:
                session = boto3.session.Session(profile_name=self.settings.profile) if self.settings.profile else boto3.session.Session()
            except BotoCoreError as exc:  # ProfileNotFound
                raise UsageError(f"S3 profile problem: {exc}", hint="check backup.s3.profile and ~/.aws/config") from None
            kwargs: dict[str, Any] = {}
            if not self.settings.profile and self.credentials.get("AWS_ACCESS_KEY_ID"):
                kwargs = {
                    "aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": self.credentials.get("AWS_SECRET_ACCESS_KEY"),
                    "aws_session_token": self.credentials.get("AWS_SESSION_TOKEN"),
                }
            config = BotoConfig(
                region_name=self.settings.region or session.region_name or "us-east-1",
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=64,
                request_checksum_calculation=self.settings.request_checksum_calculation,
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"} if self.settings.endpoint_url else {},
            )
            self._client = session.client("s3", endpoint_url=self.settings.endpoint_url, config=config, **kwargs)
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                              max_concurrency=MULTIPART_CONCURRENCY, use_threads=True)

    def _translate(self, exc: Exception, key: str | None = None) -> Exception:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, NoCredentialsError,
                                         PartialCredentialsError, ReadTimeoutError, ResponseStreamingError)

        if isinstance(exc, S3UploadFailedError):
            text = str(exc)
            if any(code in text for code in _TRANSIENT_CODES):
                return Transient(text)
            if "NoSuchBucket" in text:
                return self._no_bucket()
            if any(code in text for code in _CRED_CODES):
                return self._bad_credentials(text)
            return OperationFailed(f"upload of {key} to {self.where} failed: {text}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return Unavailable(f"no S3 credentials for {self.where}",
                               hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (environment or env file) or backup.s3.profile")
        if isinstance(exc, (ReadTimeoutError, ResponseStreamingError)):
            return Transient(str(exc))
        if isinstance(exc, BotoConnectionError):
            return Unavailable(f"cannot reach the S3 endpoint for {self.where}: {exc}",
                               hint="check backup.s3.endpoint_url, the network, and that the service runs")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") and key is not None:
                return ObjectMissing(key)
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
                return self._no_bucket()
            if code in _CRED_CODES or status == 403:
                return self._bad_credentials(f"{code}: {error.get('Message', '')}".strip(": "))
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return Transient(f"{code} {error.get('Message', '')}")
            return Unavailable(f"S3 error on {self.where}: {code} {error.get('Message', '')}".strip())
        return exc

    def _no_bucket(self) -> Unavailable:
        return Unavailable(f"the bucket {self.bucket!r} does not exist at {self.settings.endpoint_url or 'AWS S3'}",
                           hint="create it, or fix backup.target / --to")

    def _bad_credentials(self, detail: str) -> Unavailable:
        return Unavailable(f"S3 rejected the credentials for {self.where} ({detail})",
                           hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or backup.s3.profile")

    def _call(self, func: Callable[[], T], key: str | None = None) -> T:
        try:
            return func()
        except (Transient, ObjectMissing, FlashFitError):
            raise
        except Exception as exc:
            translated = self._translate(exc, key)
            if translated is exc:
                raise
            raise translated from None

    def check(self, *, create: bool = False) -> None:
        def probe() -> None:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

        try:
            self._call(probe)
        except Transient as exc:
            raise Unavailable(f"the S3 endpoint for {self.where} keeps failing: {exc}") from None

    def list(self, prefix: str) -> dict[str, int]:
        def run() -> dict[str, int]:
            found: dict[str, int] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.prefix) :]] = int(item["Size"])
            return found

        return with_retries(lambda: self._call(run))

    def put_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None:
        def run() -> None:
            self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=self._transfer_config(), Callback=on_bytes)

        self._call(run, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data), key)

    def get_file(self, key: str, path: Path, on_bytes: OnBytes | None = None) -> None:
        def run() -> None:
            self.client.download_file(self.bucket, self.prefix + key, str(path), Config=self._transfer_config(), Callback=on_bytes)

        try:
            self._call(run, key)
        except OSError as exc:
            if exc.errno == 28:
                raise OperationFailed(f"no space left on the device holding {path}") from None
            raise

    def get_bytes(self, key: str) -> bytes:
        def run() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

        return self._call(run, key)

    def delete(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]

            def run(batch: list[str] = batch) -> None:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self.prefix + k} for k in batch], "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise OperationFailed(f"S3 refused to delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}")

            with_retries(lambda: self._call(run))


def scratch_dir(near: Path | None = None) -> Path:
    """A private temporary folder (for compressed blobs on their way to the store)."""
    return Path(tempfile.mkdtemp(prefix="flashfit-backup-", dir=near))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
