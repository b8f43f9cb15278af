"""Blob content: naming (SHA-256), compression (zstd or raw, whichever pays), encryption.

Float32 index files barely compress, so compression is tried on a sample first and a file whose
sample does not shrink by at least 10% is stored raw (no CPU spent, and a raw blob can be
uploaded straight from the source file with multipart). Otherwise the whole file is compressed
and kept compressed only if that still pays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

import zstandard

CHUNK = 1 << 20
ZSTD_LEVEL = 3
PAYS = 0.90  # stored / raw must be at most this for compression to be kept
SAMPLE = 256 * 1024
SMALL = 4 * CHUNK  # below this, compress in memory

OnBytes = Callable[[int], None]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, on_bytes: OnBytes | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
            if on_bytes:
                on_bytes(len(block))
    return digest.hexdigest(), size


def compress_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def pays(raw: int, stored: int) -> bool:
    return raw > 0 and stored <= raw * PAYS


def sample_pays(path: Path, size: int) -> bool:
    """Compress up to three samples (start, middle, end); True when they shrink enough."""
    if size == 0:
        return False
    offsets = sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)})
    raw = stored = 0
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            block = handle.read(SAMPLE)
            raw += len(block)
            stored += len(compressor.compress(block))
    return pays(raw, stored)


def compress_file(source: Path, dest: Path) -> int:
    """Stream-compress source into dest; returns the stored size."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
    with open(source, "rb") as src, open(dest, "wb") as out:
        compressor.copy_stream(src, out, read_size=CHUNK, write_size=CHUNK)
    return dest.stat().st_size


def decoded_reader(handle: BinaryIO, compression: str) -> BinaryIO:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(handle, read_size=CHUNK, closefd=False)
    return handle


def decode_bytes(data: bytes, compression: str) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def copy_decoded(source: BinaryIO, dest: BinaryIO | None, compression: str, limit: int) -> tuple[str, int]:
    """Decode source into dest (None: only hash); returns (sha256, size) of the decoded bytes.
    Reads at most limit+1 decoded bytes, so a blob that inflates beyond its recorded size is
    caught without filling the disk."""
    digest = hashlib.sha256()
    size = 0
    reader = decoded_reader(source, compression)
    while block := reader.read(CHUNK):
        size += len(block)
        if size > limit:
            break
        digest.update(block)
        if dest is not None:
            dest.write(block)
    return digest.hexdigest(), size


# --- encryption of secrets --------------------------------------------------------------------

NONCE = 12


class KeyError_(ValueError):
    """The encryption key is missing or malformed (message never contains the key)."""


def parse_key(material: str) -> tuple[bytes | None, str]:
    """A 32-byte key as 64 hex digits or base64, else a passphrase (derived with scrypt).
    Returns (key or None for a passphrase, kind)."""
    text = material.strip()
    if not text:
        raise KeyError_("the encryption key is empty")
    if len(text) == 64:
        try:
            return binascii.unhexlify(text), "raw"
        except binascii.Error:
            pass
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
        if len(decoded) == 32:
            return decoded, "raw"
    except (binascii.Error, ValueError):
        pass
    if len(text) < 12:
        raise KeyError_("a passphrase used as encryption key must have at least 12 characters")
    return None, "scrypt"


def _derive(material: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(material.strip().encode())


def encrypt(plaintext: bytes, material: str, aad: str) -> tuple[bytes, dict]:
    """AES-256-GCM; the blob is nonce || ciphertext+tag; aad binds it to its path."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, kind = parse_key(material)
    record: dict = {"alg": "AES-256-GCM", "kdf": kind}
    if key is None:
        salt = os.urandom(16)
        key = _derive(material, salt)
        record["salt"] = salt.hex()
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad.encode()), record


def decrypt(blob: bytes, material: str, record: dict, aad: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if record.get("alg") != "AES-256-GCM":
        raise KeyError_(f"unknown encryption {record.get('alg')!r}")
    if record.get("kdf") == "scrypt":
        key = _derive(material, bytes.fromhex(str(record.get("salt", ""))))
    else:
        raw, kind = parse_key(material)
        if raw is None:
            raise KeyError_("this file was encrypted with a raw key, not a passphrase")
        key = raw
    try:
        return AESGCM(key).decrypt(blob[:NONCE], blob[NONCE:], aad.encode())
    except InvalidTag:
        raise KeyError_("wrong encryption key, or the encrypted file was altered") from None
