"""The models folder (MODEL_CACHE_DIR): one checkpoint folder per slot, `<root>/<checkpoint name>`,
as `flashfit-server models pull|make-tiny DIR` writes it and the server loads it (local files
only). Standard library only: `flashfit build` checks a folder here before baking it into an image,
and names the first thing that would stop the server loading it, instead of shipping an image
whose replicas never turn ready.

A checkpoint is complete when it has a config.json and a processor config (JSON objects), a
tokenizer, and weights that are all there: a safetensors file whose header accounts for exactly
its size (a truncated download fails here), the shards an index names, or a torch zip archive.
Links may point only inside the folder; hidden files and folders (.cache of the hub client, an
.env left there) are never part of a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# The checkpoint each slot loads unless CLIP_MODEL / BLIP_MODEL / FASHION_MODEL say otherwise.
DEFAULT_CHECKPOINTS: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch32",
    "blip": "Salesforce/blip-image-captioning-base",
    "fashion": "patrickjohncyh/fashion-clip",
}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


class ModelFolderError(ValueError):
    """The models folder is missing or incomplete; the message names the checkpoint and file."""


@dataclass(frozen=True)
class ModelFile:
    relative: str  # <checkpoint name>/<path inside it>, "/"-separated
    path: Path  # where its bytes are (links resolved)
    size: int


@dataclass(frozen=True)
class ModelFolder:
    root: Path
    files: tuple[ModelFile, ...]  # sorted by relative path

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def digest(self) -> str:
        """sha256 over every file's name, size and content: equal folders, equal digests."""
        outer = hashlib.sha256()
        for item in self.files:
            inner = hashlib.sha256()
            with open(item.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    inner.update(block)
            outer.update(f"{item.relative}\0{item.size}\0{inner.hexdigest()}\n".encode())
        return "sha256:" + outer.hexdigest()


def _json_object(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{what}: {path.name} is missing")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelFolderError(f"{what}: {path.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"{what}: {path.name} is not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{what}: {path.name} is not a JSON object")
    return value


def check_safetensors(path: Path, what: str) -> None:
    """The header is JSON naming each tensor's byte range; the file is exactly header + data."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{what}: {path.name} is truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise ModelFolderError(f"{what}: {path.name} is truncated or not safetensors (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ModelFolderError(f"{what}: {path.name} has an unreadable header") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{what}: {path.name} has an unreadable header")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):  # fmt: skip
            raise ModelFolderError(f"{what}: {path.name}: tensor {str(name)[:60]!r} has no valid data_offsets")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise ModelFolderError(
            f"{what}: {path.name} is {size} bytes but its header needs {8 + length + end} (an interrupted download?)"
        )


def _check_weights_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelFolderError(f"{what}: weight file {path.name} is missing")
    if path.name.endswith(".safetensors"):
        check_safetensors(path, what)
    elif not zipfile.is_zipfile(path):
        raise ModelFolderError(f"{what}: {path.name} is not a torch checkpoint (a zip archive)")


def _check_weights(folder: Path, what: str) -> None:
    for name in (SAFETENSORS, TORCH_BIN):
        if (folder / name).exists():
            return _check_weights_file(folder / name, what)
    for index_name in INDEXES:
        if (folder / index_name).exists():
            weight_map = _json_object(folder / index_name, what).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFolderError(f"{what}: {index_name} has no weight_map")
            for shard in sorted({str(s) for s in weight_map.values()}):
                if "/" in shard or "\\" in shard or shard.startswith("."):
                    raise ModelFolderError(f"{what}: {index_name} names a shard outside the folder: {shard[:80]!r}")
                _check_weights_file(folder / shard, what)
            return None
    raise ModelFolderError(f"{what}: no weights ({SAFETENSORS}, {TORCH_BIN} or a sharded index)")


def _inside(root: Path, path: Path, what: str) -> Path:
    target = path.resolve()
    if target != root and root not in target.parents:
        raise ModelFolderError(f"{what}: {path.name} links outside the models folder")
    return target


def check_checkpoint(root: Path, name: str) -> list[ModelFile]:
    """The files of one checkpoint, once it is complete; raises ModelFolderError naming what is not."""
    what = f"checkpoint {name}"
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ModelFolderError(f"{what}: not a plain checkpoint name")
    folder = root / name
    if not folder.is_dir():
        raise ModelFolderError(f"{what}: {folder} is missing (`flashfit-server models pull {root}`)")
    _inside(root, folder, what)
    _json_object(folder / "config.json", what)
    if not any((folder / p).is_file() for p in PROCESSOR_FILES):
        raise ModelFolderError(f"{what}: no processor config ({' or '.join(PROCESSOR_FILES)})")
    for present in PROCESSOR_FILES:
        if (folder / present).is_file():
            _json_object(folder / present, what)
            break
    if not any((folder / t).is_file() for t in TOKENIZER_FILES):
        raise ModelFolderError(f"{what}: no tokenizer ({', '.join(TOKENIZER_FILES)})")
    _check_weights(folder, what)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # the hub client's .cache, an editor's or a user's dotfiles
        target = _inside(root, path, what)
        if target.is_file():
            files.append(ModelFile(f"{name}/{relative.as_posix()}", target, target.stat().st_size))
        elif not target.is_dir():
            raise ModelFolderError(f"{what}: {relative} is neither a file nor a folder")
    return files


def validate_model_folder(root: Path, names: tuple[str, ...] | None = None) -> ModelFolder:
    """Check every slot's checkpoint under `root` (the default checkpoints unless named)."""
    root = Path(root)
    if not root.is_dir():
        raise ModelFolderError(f"{root} is not a folder")
    root = root.resolve()
    wanted = names if names is not None else tuple(DEFAULT_CHECKPOINTS.values())
    files: list[ModelFile] = []
    for name in dict.fromkeys(wanted):  # two slots may share one checkpoint
        files += check_checkpoint(root, name)
    return ModelFolder(root, tuple(sorted(files, key=lambda f: f.relative)))
