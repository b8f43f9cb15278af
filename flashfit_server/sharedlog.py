"""The shared catalogue log in object storage (S3): what every node's replicas follow.

Layout under s3://<bucket>/<prefix>/:
  segments/<sha256>        segment bytes (segments.encode: ids + vectors), content-addressed
  images/<sha256>          item image bytes, content-addressed
  parts/<sha256>           a batch of items (their metadata, image refs and one segment per store):
                           what an import record and a checkpoint name, content-addressed
  log/<seq:012d>.json      one commit record per catalogue commit, seq = 1, 2, 3, ...; seq 1 may be
                           an "import" (a whole existing catalogue published at once, as parts)
  checkpoints/<seq:012d>.json  the whole catalogue as of log seq N, as parts: a joiner loads the
                           newest valid one and replays only the records after it

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
PART_FORMAT = "flashfit-part/1"
CHECKPOINT_FORMAT = "flashfit-checkpoint/1"
MAX_PARTS = 1_000_000
MAX_RECORD_BYTES = 16 << 20
MAX_IMAGE_BYTES = 64 << 20
SEGMENT_HEADER = 64  # segments.HEADER (not imported: this module stays free of numpy)
MAX_SEQ = 10**12 - 1  # 12 digits keep the keys in seq order when listed
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,512}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,8}$")
_LOG_KEY = re.compile(r"log/([0-9]{12})\.json$")
_CHECKPOINT_KEY = re.compile(r"checkpoints/([0-9]{12})\.json$")


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
class PartRef:
    """A part blob as a record or checkpoint names it: its sha256, size and how many items it holds."""

    sha256: str
    size: int
    items: int

    @property
    def blob(self) -> BlobRef:
        return BlobRef(self.sha256, self.size)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "items": self.items}


@dataclass(frozen=True)
class Part:
    """Items with one segment per store holding exactly their vectors, in id order: the body of
    an add record, and the unit of an import record and of a checkpoint."""

    dims: Mapping[str, int]
    items: tuple[ItemRecord, ...]
    segments: Mapping[str, BlobRef]
    where: str = "part"

    @property
    def ids(self) -> list[int]:
        return [item.id for item in self.items]

    def encode(self) -> bytes:
        body = {"format": PART_FORMAT, "dims": dict(self.dims), "items": [i.to_json() for i in self.items],
                "segments": {n: b.to_json() for n, b in self.segments.items()}}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Record:
    """One catalogue commit: items added (their vectors in one segment per store), an id deleted,
    or (seq 1 only) a whole existing catalogue imported as parts."""

    seq: int
    op: str  # "add" | "delete" | "import"
    writer: str
    dims: Mapping[str, int] = field(default_factory=dict)
    items: tuple[ItemRecord, ...] = ()
    segments: Mapping[str, BlobRef] = field(default_factory=dict)
    deleted: int = 0
    parts: tuple[PartRef, ...] = ()  # import
    next_id: int = 0  # import: the id the catalogue hands out next (deleted ids are never reused)

    @property
    def ids(self) -> list[int]:
        return [item.id for item in self.items] if self.op == "add" else [self.deleted] if self.op == "delete" else []

    @property
    def where(self) -> str:
        return f"log record {self.seq}"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"format": RECORD_FORMAT, "seq": self.seq, "op": self.op, "writer": self.writer}
        if self.op == "add":
            body |= {"dims": dict(self.dims), "items": [i.to_json() for i in self.items],
                     "segments": {n: b.to_json() for n, b in self.segments.items()}}
        elif self.op == "import":
            body |= {"dims": dict(self.dims), "parts": [p.to_json() for p in self.parts], "next_id": self.next_id,
                     "items": sum(p.items for p in self.parts)}
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


def _json_object(data: bytes, where: str, fmt: str, limit: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    if len(data) > limit:
        raise SyncError(f"{where} is larger than {limit} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SyncError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise SyncError(f"{where}: format must be {fmt!r}")
    return raw


def _dims(raw: object, where: str) -> dict[str, int]:
    if not isinstance(raw, dict) or set(raw) != set(STORE_NAMES):
        raise SyncError(f"{where}.dims must name exactly {', '.join(STORE_NAMES)}")
    return {n: _int(raw[n], f"{where}.dims.{n}", 1, MAX_DIM) for n in STORE_NAMES}


def _add_body(raw: dict[str, Any], where: str) -> Part:
    """The items + segments of an add record or a part, every field and size checked."""
    items_raw, segs_raw = raw.get("items"), raw.get("segments")
    dims = _dims(raw.get("dims"), where)
    if not isinstance(segs_raw, dict) or set(segs_raw) != set(STORE_NAMES):
        raise SyncError(f"{where}.segments must name exactly {', '.join(STORE_NAMES)}")
    if not isinstance(items_raw, list) or not 1 <= len(items_raw) <= 100_000:
        raise SyncError(f"{where}.items must be a non-empty list")
    items = tuple(_item(r, f"{where}.items[{i}]") for i, r in enumerate(items_raw))
    if len({i.id for i in items}) != len(items):
        raise SyncError(f"{where}.items lists an id twice")
    segments = {n: _blob(segs_raw[n], f"{where}.segments.{n}") for n in STORE_NAMES}
    for name in STORE_NAMES:  # the size a segment of these items must have: nothing bigger is downloaded
        if segments[name].size != SEGMENT_HEADER + len(items) * (8 + 4 * dims[name]):
            raise SyncError(f"{where}.segments.{name}.size does not fit {len(items)} vectors of {dims[name]} floats")
    for item in items:
        if item.image.size > MAX_IMAGE_BYTES:
            raise SyncError(f"{where}: the image of item {item.id} is larger than {MAX_IMAGE_BYTES} bytes")
    return Part(dims, items, segments, where)


def _part_refs(raw: object, where: str) -> tuple[PartRef, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_PARTS:
        raise SyncError(f"{where}.parts must be a list of at most {MAX_PARTS} parts")
    refs = []
    for i, value in enumerate(raw):
        blob = _blob(value, f"{where}.parts[{i}]")
        if blob.size > MAX_RECORD_BYTES:
            raise SyncError(f"{where}.parts[{i}].size is larger than {MAX_RECORD_BYTES} bytes")
        refs.append(PartRef(blob.sha256, blob.size, _int(value.get("items"), f"{where}.parts[{i}].items", 1, 100_000)))
    if len({r.sha256 for r in refs}) != len(refs):
        raise SyncError(f"{where}.parts names a part twice")
    return tuple(refs)


def _catalogue_fields(raw: dict[str, Any], where: str) -> tuple[dict[str, int], tuple[PartRef, ...], int]:
    """dims, parts and next_id of an import record or a checkpoint; the item count must add up."""
    dims = _dims(raw.get("dims"), where)
    parts = _part_refs(raw.get("parts"), where)
    count = _int(raw.get("items"), f"{where}.items", 0, MAX_ID)
    if sum(p.items for p in parts) != count:
        raise SyncError(f"{where}: its parts hold {sum(p.items for p in parts)} items, it says {count}")
    next_id = _int(raw.get("next_id"), f"{where}.next_id", 1, MAX_ID + 1)
    return dims, parts, next_id


def parse_record(data: bytes, seq: int) -> Record:
    """A record read from log/<seq>.json, every field checked; SyncError names the first problem."""
    where = f"log record {seq}"
    raw = _json_object(data, where, RECORD_FORMAT)
    if raw.get("seq") != seq:
        raise SyncError(f"{where} says it is seq {raw.get('seq')!r:.20}: refused")
    writer = _text(raw.get("writer"), f"{where}.writer", 200) or ""
    op = raw.get("op")
    if op == "delete":
        return Record(seq, "delete", writer, deleted=_int(raw.get("deleted"), f"{where}.deleted", 1, MAX_ID))
    if op == "import":
        if seq != 1:  # an import seeds an empty log; later it would interleave two catalogues
            raise SyncError(f"{where}: an import may only be log record 1")
        dims, parts, next_id = _catalogue_fields(raw, where)
        return Record(seq, "import", writer, dims=dims, parts=parts, next_id=next_id)
    if op != "add":
        raise SyncError(f"{where}.op must be 'add' or 'delete' (or 'import', as record 1), got {op!r:.40}")
    body = _add_body(raw, where)
    return Record(seq, "add", writer, dims=body.dims, items=body.items, segments=body.segments)


def parse_part(data: bytes, ref: PartRef) -> Part:
    """A part blob (its sha256 already checked by get_blob), every field checked."""
    where = f"parts/{ref.sha256}"
    part = _add_body(_json_object(data, where, PART_FORMAT), where)
    if len(part.items) != ref.items:
        raise SyncError(f"{where} holds {len(part.items)} items, its reference says {ref.items}")
    return part


@dataclass(frozen=True)
class Checkpoint:
    """The whole catalogue as of log seq `seq`, as parts (deleted items left out)."""

    seq: int
    writer: str
    dims: Mapping[str, int]
    parts: tuple[PartRef, ...]
    next_id: int

    @property
    def items(self) -> int:
        return sum(p.items for p in self.parts)

    def encode(self) -> bytes:
        body = {"format": CHECKPOINT_FORMAT, "seq": self.seq, "writer": self.writer, "dims": dict(self.dims),
                "parts": [p.to_json() for p in self.parts], "items": self.items, "next_id": self.next_id}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_checkpoint(data: bytes, seq: int) -> Checkpoint:
    """A checkpoint read from checkpoints/<seq>.json, as strictly as a record."""
    where = f"checkpoint {seq}"
    raw = _json_object(data, where, CHECKPOINT_FORMAT)
    if raw.get("seq") != seq:
        raise SyncError(f"{where} says it is seq {raw.get('seq')!r:.20}: refused")
    writer = _text(raw.get("writer"), f"{where}.writer", 200) or ""
    dims, parts, next_id = _catalogue_fields(raw, where)
    return Checkpoint(seq, writer, dims, parts, next_id)


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

    def has_blob(self, kind: str, ref: BlobRef) -> bool:
        """True if the blob is there at its size (a rerun of a publish skips what it uploaded)."""
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(f"{kind}/{ref.sha256}"))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise LogUnreachable(f"cannot look for {kind}/{ref.sha256[:16]}: {exc}") from None
        except self._errors() as exc:
            raise LogUnreachable(f"cannot look for {kind}/{ref.sha256[:16]}: {exc}") from None
        return int(head.get("ContentLength", -1)) == ref.size

    def get_blob(self, kind: str, ref: BlobRef) -> bytes:
        """The blob's bytes, refused (BlobMismatch) unless they hash to what the record says;
        a blob that is not there at all is refused too (it never will be)."""
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        name = f"{kind}/{ref.sha256}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            data = body.read(ref.size + 1)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                raise BlobMismatch(f"{name} is missing from the bucket: refused") from None
            raise LogUnreachable(f"cannot download {name}: {exc}") from None
        except self._errors() as exc:
            raise LogUnreachable(f"cannot download {name}: {exc}") from None
        if len(data) != ref.size:
            raise BlobMismatch(f"{name} is not the {ref.size} bytes its record names: refused")
        if sha256_hex(data) != ref.sha256:
            raise BlobMismatch(f"{name} does not match its sha256 (tampered or damaged): refused")
        return data

    def _list(self, folder: str, pattern: re.Pattern[str], start_after: str | None = None) -> list[int]:
        seqs: list[int] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key(folder)}
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            while True:
                page = self.client.list_objects_v2(**kwargs)
                for obj in page.get("Contents", []):
                    match = pattern.search(obj["Key"])
                    if match:
                        seqs.append(int(match.group(1)))
                if not page.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except self._errors() as exc:
            raise LogUnreachable(f"cannot list the shared log at {self.url}: {exc}") from None
        return sorted(seqs)

    def list_after(self, seq: int) -> list[int]:
        """Seqs of the records after `seq`, in order."""
        return [s for s in self._list("log/", _LOG_KEY, self.log_key(seq)) if s > seq]

    def list_checkpoints(self) -> list[int]:
        """Seqs of the checkpoints, oldest first."""
        return self._list("checkpoints/", _CHECKPOINT_KEY)

    def checkpoint_key(self, seq: int) -> str:
        return self.key(f"checkpoints/{seq:012d}.json")

    def get_checkpoint(self, seq: int) -> Checkpoint:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.checkpoint_key(seq))["Body"]
            data = body.read(MAX_RECORD_BYTES + 1)
        except self._errors() as exc:
            raise LogUnreachable(f"cannot read checkpoint {seq}: {exc}") from None
        return parse_checkpoint(data, seq)

    def put_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Create checkpoints/<seq>.json; False if one for that seq is there already."""
        return self._create(self.checkpoint_key(checkpoint.seq), checkpoint.encode(), f"checkpoint {checkpoint.seq}",
                            conditional=True)

    def get_record(self, seq: int) -> Record:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.log_key(seq))["Body"]
            data = body.read(MAX_RECORD_BYTES + 1)
        except self._errors() as exc:
            raise LogUnreachable(f"cannot read log record {seq}: {exc}") from None
        return parse_record(data, seq)

    def append(self, record: Record) -> bool:
        """Create log/<record.seq>.json; False if another writer created that seq first."""
        if not 1 <= record.seq <= MAX_SEQ:
            raise SyncError(f"log seq {record.seq} is out of range")
        return self._create(self.log_key(record.seq), record.encode(), f"log record {record.seq}", self.conditional)

    def _create(self, key: str, body: bytes, what: str, conditional: bool) -> bool:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "ContentType": "application/json"}
        if conditional:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise LogUnreachable(f"cannot create {what}: {exc}") from None
        except self._errors() as exc:
            raise LogUnreachable(f"cannot create {what}: {exc}") from None
        return True
