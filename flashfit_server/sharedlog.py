"""The shared catalogue log in object storage (S3): what every node's replicas follow.

Layout under s3://<bucket>/<prefix>/:
  segments/<sha256>        segment bytes (segments.encode: ids + vectors), content-addressed
  images/<sha256>          item image bytes, content-addressed
  log/<seq:012d>.json      one commit record per catalogue commit, seq = 1, 2, 3, ...

A writer uploads the blobs first, then creates the next record with a conditional write
(If-None-Match: *): of two writers racing for the same seq exactly one succeeds; the other gets
412, reads what it missed and retries at the next seq, so no acknowledged commit is overwritten.
Records and blobs are untrusted: every field is checked and every blob must match the sha256 its
record names before anything is applied (BlobMismatch names the object).

boto3 is imported only when a log is opened (the ops CLI and servers without sync never load it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flashfit_contract.datafolder import MAX_DIM, MAX_ID, STORE_NAMES

RECORD_FORMAT = "flashfit-log/1"
MAX_RECORD_BYTES = 16 << 20
MAX_IMAGE_BYTES = 64 << 20
SEGMENT_HEADER = 64  # segments.HEADER (not imported: this module stays free of numpy)
MAX_SEQ = 10**12 - 1  # 12 digits keep the keys in seq order when listed
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,512}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,8}$")
_LOG_KEY = re.compile(r"log/([0-9]{12})\.json$")


class SyncError(RuntimeError):
    """The shared log cannot be read or applied; the message names the record or object."""


class LogUnreachable(SyncError):
    """The bucket did not answer (network, credentials, throttling): worth retrying."""


class BlobMismatch(SyncError):
    """A blob's bytes do not match the sha256 (or size) its record names: refused."""


def parse_sync_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at the ends)."""
    if not url.startswith("s3://"):
        raise ValueError(f"must look like s3://bucket/prefix, got {url!r:.80}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r:.80} is not a valid S3 bucket name")
    if not _PREFIX.match(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"prefix {prefix!r:.80} holds characters S3 keys should not")
    return bucket, prefix


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ItemRecord:
    id: int
    name: str
    caption: str
    created_at: str
    image: BlobRef
    image_extension: str
    category: str | None = None
    color: str | None = None
    tags: tuple[str, ...] = ()
    user_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "caption": self.caption, "created_at": self.created_at,
            "image": self.image.to_json(), "image_extension": self.image_extension, "category": self.category,
            "color": self.color, "tags": list(self.tags), "user_id": self.user_id,
        }


@dataclass(frozen=True)
class Record:
    """One catalogue commit: items added (their vectors in one segment per store) or an id deleted."""

    seq: int
    op: str  # "add" | "delete"
    writer: str
    dims: Mapping[str, int] = field(default_factory=dict)
    items: tuple[ItemRecord, ...] = ()
    segments: Mapping[str, BlobRef] = field(default_factory=dict)
    deleted: int = 0

    @property
    def ids(self) -> list[int]:
        return [item.id for item in self.items] if self.op == "add" else [self.deleted]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"format": RECORD_FORMAT, "seq": self.seq, "op": self.op, "writer": self.writer}
        if self.op == "add":
            body |= {"dims": dict(self.dims), "items": [i.to_json() for i in self.items],
                     "segments": {n: b.to_json() for n, b in self.segments.items()}}
        else:
            body["deleted"] = self.deleted
        return body

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SyncError(f"{where} must be an integer in [{low}, {high}], got {value!r:.60}")
    return value


def _text(value: object, where: str, limit: int, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise SyncError(f"{where} must be text of at most {limit} characters")
    return value


def _blob(value: object, where: str) -> BlobRef:
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), str) or not _SHA.match(value["sha256"]):
        raise SyncError(f"{where} must be {{sha256: 64 hex, size}}")
    return BlobRef(value["sha256"], _int(value.get("size"), f"{where}.size", 0, 1 << 40))


def _item(raw: object, where: str) -> ItemRecord:
    if not isinstance(raw, dict):
        raise SyncError(f"{where} must be an object")
    extension = raw.get("image_extension")
    if not isinstance(extension, str) or not _EXTENSION.match(extension):
        raise SyncError(f"{where}.image_extension must be a short lowercase extension")
    tags = raw.get("tags")
    if not isinstance(tags, list) or len(tags) > 256 or not all(isinstance(t, str) and len(t) <= 200 for t in tags):
        raise SyncError(f"{where}.tags must be a list of short strings")
    return ItemRecord(
        id=_int(raw.get("id"), f"{where}.id", 1, MAX_ID),
        name=_text(raw.get("name"), f"{where}.name", 1000) or "",
        caption=_text(raw.get("caption"), f"{where}.caption", 10_000) or "",
        created_at=_text(raw.get("created_at"), f"{where}.created_at", 64) or "",
        image=_blob(raw.get("image"), f"{where}.image"),
        image_extension=extension,
        category=_text(raw.get("category"), f"{where}.category", 1000, optional=True),
        color=_text(raw.get("color"), f"{where}.color", 1000, optional=True),
        tags=tuple(tags),
        user_id=_text(raw.get("user_id"), f"{where}.user_id", 1000, optional=True),
    )


def parse_record(data: bytes, seq: int) -> Record:
    """A record read from log/<seq>.json, every field checked; SyncError names the first problem."""
    where = f"log record {seq}"
    if len(data) > MAX_RECORD_BYTES:
        raise SyncError(f"{where} is larger than {MAX_RECORD_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SyncError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
        raise SyncError(f"{where}: format must be {RECORD_FORMAT!r}")
    if raw.get("seq") != seq:
        raise SyncError(f"{where} says it is seq {raw.get('seq')!r:.20}: refused")
    writer = _text(raw.get("writer"), f"{where}.writer", 200) or ""
    op = raw.get("op")
    if op == "delete":
        return Record(seq, "delete", writer, deleted=_int(raw.get("deleted"), f"{where}.deleted", 1, MAX_ID))
    if op != "add":
        raise SyncError(f"{where}.op must be 'add' or 'delete', got {op!r:.40}")
    dims_raw, items_raw, segs_raw = raw.get("dims"), raw.get("items"), raw.get("segments")
    if not isinstance(dims_raw, dict) or set(dims_raw) != set(STORE_NAMES):
        raise SyncError(f"{where}.dims must name exactly {', '.join(STORE_NAMES)}")
    if not isinstance(segs_raw, dict) or set(segs_raw) != set(STORE_NAMES):
        raise SyncError(f"{where}.segments must name exactly {', '.join(STORE_NAMES)}")
    if not isinstance(items_raw, list) or not 1 <= len(items_raw) <= 100_000:
        raise SyncError(f"{where}.items must be a non-empty list")
    items = tuple(_item(r, f"{where}.items[{i}]") for i, r in enumerate(items_raw))
    if len({i.id for i in items}) != len(items):
        raise SyncError(f"{where}.items lists an id twice")
    dims = {n: _int(dims_raw[n], f"{where}.dims.{n}", 1, MAX_DIM) for n in STORE_NAMES}
    segments = {n: _blob(segs_raw[n], f"{where}.segments.{n}") for n in STORE_NAMES}
    for name in STORE_NAMES:  # the size a segment of these items must have: nothing bigger is downloaded
        if segments[name].size != SEGMENT_HEADER + len(items) * (8 + 4 * dims[name]):
            raise SyncError(f"{where}.segments.{name}.size does not fit {len(items)} vectors of {dims[name]} floats")
    for item in items:
        if item.image.size > MAX_IMAGE_BYTES:
            raise SyncError(f"{where}: the image of item {item.id} is larger than {MAX_IMAGE_BYTES} bytes")
    return Record(seq, "add", writer, dims=dims, items=items, segments=segments)


# --- the bucket ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncTarget:
    url: str  # s3://bucket/prefix
    endpoint_url: str | None = None
    region: str | None = None
    # (key id, secret, session token) read from files; empty: boto3's own chain.
    credentials: tuple[str, str, str] = field(default=("", "", ""), repr=False)


class SharedLog:
    """Reads and appends records; `conditional=False` is the naive last-writer-wins put (kept
    only so a test can show what it loses)."""

    def __init__(self, target: SyncTarget, client: Any = None, conditional: bool = True):
        self.target = target
        self.bucket, self.prefix = parse_sync_url(target.url)
        self.conditional = conditional
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]

            config = Config(
                region_name=self.target.region or "us-east-1",
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=3, read_timeout=20, max_pool_connections=32,
                s3={"addressing_style": "path"} if self.target.endpoint_url else {},
            )
            # Credentials: the ones read from secret files, else boto3's own chain (environment,
            # shared credentials file, instance roles).
            key_id, secret, token = self.target.credentials
            explicit = {"aws_access_key_id": key_id, "aws_secret_access_key": secret,
                        "aws_session_token": token or None} if key_id else {}
            self._client = boto3.session.Session().client("s3", endpoint_url=self.target.endpoint_url, config=config,
                                                          **explicit)
        return self._client

    @property
    def url(self) -> str:
        """The log's URL in one spelling (no trailing slash), as replicas report it."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def log_key(self, seq: int) -> str:
        return self.key(f"log/{seq:012d}.json")

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        return (BotoCoreError, ClientError)

    def put_blob(self, kind: str, data: bytes) -> BlobRef:
        """Upload content-addressed bytes (kind: segments | images); idempotent."""
        ref = BlobRef(sha256_hex(data), len(data))
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(f"{kind}/{ref.sha256}"), Body=data)
        except self._errors() as exc:
            raise LogUnreachable(f"cannot upload {kind}/{ref.sha256[:16]}: {exc}") from None
        return ref

    def get_blob(self, kind: str, ref: BlobRef) -> bytes:
        """The blob's bytes, refused (BlobMismatch) unless they hash to what the record says."""
        name = f"{kind}/{ref.sha256}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            data = body.read(ref.size + 1)
        except self._errors() as exc:
            raise LogUnreachable(f"cannot download {name}: {exc}") from None
        if len(data) != ref.size:
            raise BlobMismatch(f"{name} is not the {ref.size} bytes its record names: refused")
        if sha256_hex(data) != ref.sha256:
            raise BlobMismatch(f"{name} does not match its sha256 (tampered or damaged): refused")
        return data

    def list_after(self, seq: int) -> list[int]:
        """Seqs of the records after `seq`, in order."""
        seqs: list[int] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key("log/"), "StartAfter": self.log_key(seq)}
        try:
            while True:
                page = self.client.list_objects_v2(**kwargs)
                for obj in page.get("Contents", []):
                    match = _LOG_KEY.search(obj["Key"])
                    if match:
                        seqs.append(int(match.group(1)))
                if not page.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except self._errors() as exc:
            raise LogUnreachable(f"cannot list the shared log at {self.url}: {exc}") from None
        return sorted(s for s in seqs if s > seq)

    def get_record(self, seq: int) -> Record:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.log_key(seq))["Body"]
            data = body.read(MAX_RECORD_BYTES + 1)
        except self._errors() as exc:
            raise LogUnreachable(f"cannot read log record {seq}: {exc}") from None
        return parse_record(data, seq)

    def append(self, record: Record) -> bool:
        """Create log/<record.seq>.json; False if another writer created that seq first."""
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        if not 1 <= record.seq <= MAX_SEQ:
            raise SyncError(f"log seq {record.seq} is out of range")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.log_key(record.seq), "Body": record.encode(),
                                  "ContentType": "application/json"}
        if self.conditional:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise LogUnreachable(f"cannot append log record {record.seq}: {exc}") from None
        except self._errors() as exc:
            raise LogUnreachable(f"cannot append log record {record.seq}: {exc}") from None
        return True
