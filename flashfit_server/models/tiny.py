"""Small, deterministic checkpoints of the three model architectures, for tests and benchmarks.

`make_checkpoints(root, seed)` writes, under `root/<checkpoint name>`, a CLIPModel (for the CLIP
and the fashion slots) and a BlipForConditionalGeneration with their processors and hand-made
tokenizer vocabularies, so that `MODEL_CACHE_DIR=root` loads them through exactly the code path
that loads real checkpoints. `size="full"` builds the real CLIP ViT-B/32 and BLIP-base
architectures with random weights (for benchmarks; nothing is downloaded).

Same seed -> byte-identical safetensors: weights come from a seeded torch generator on CPU and the
files carry no timestamps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from flashfit_contract.modelfolder import DEFAULT_CHECKPOINTS

DEFAULT_CLIP = DEFAULT_CHECKPOINTS["clip"]
DEFAULT_BLIP = DEFAULT_CHECKPOINTS["blip"]
DEFAULT_FASHION = DEFAULT_CHECKPOINTS["fashion"]

Size = Literal["tiny", "full"]

# Words the BLIP tokenizer knows whole; anything else is spelled with ## letter pieces.
_BLIP_WORDS = (
    "a an the of on in with and shirt dress shoes jacket coat pants jeans skirt hat bag red blue "
    "green black white yellow pink grey brown striped casual formal summer winter party woman man "
    "person wearing photo picture"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """A complete byte-level alphabet (every text encodes) plus a few merges; 514 + merges tokens."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [ch + "</w>" for ch in alphabet]
    merges = ["t h", "th e</w>", "s h", "i r", "ir t</w>", "e s", "r e"]
    for merge in merges:
        left, right = merge.split()
        tokens.append(left + right)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def blip_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    punctuation = list(".,!?'-")
    return specials + letters + digits + punctuation + _BLIP_WORDS + ["##" + ch for ch in letters + digits]


def _clip_config(size: Size, vocab_size: int, bos: int, eos: int, projection_dim: int):  # noqa: ANN202
    from transformers import CLIPConfig

    if size == "full":
        # CLIPConfig defaults are the ViT-B/32 architecture; only the vocabulary is ours.
        text = {"vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
        return CLIPConfig(text_config=text, vision_config={}, projection_dim=512)
    text = {
        "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": bos,
        "eos_token_id": eos, "pad_token_id": eos, "projection_dim": projection_dim,
    }
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8, "projection_dim": projection_dim,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def _blip_config(size: Size, vocab: list[str]):  # noqa: ANN202
    from transformers import BlipConfig

    ids = {tok: i for i, tok in enumerate(vocab)}
    # bos/eos/pad/sep must index the small vocabulary or generation reads past the embedding table.
    token_ids = {
        "vocab_size": len(vocab), "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"],
        "sep_token_id": ids["[SEP]"], "pad_token_id": ids["[PAD]"],
    }
    if size == "full":
        # BLIP-base defaults; the vision default init (1e-10) would make every caption the same.
        return BlipConfig(text_config=token_ids, vision_config={"initializer_range": 0.02})
    text = {
        **token_ids, "hidden_size": 32, "encoder_hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
        "projection_dim": 32, "initializer_range": 0.2,  # wide init: captions vary with the image
    }
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8, "projection_dim": 32, "initializer_range": 0.2,
    }
    return BlipConfig(
        text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32, initializer_range=0.2
    )


def _seeded_model(model_cls, config, seed: int):  # noqa: ANN001, ANN202
    import torch

    torch.manual_seed(seed)
    model = model_cls(config)
    model.eval()
    return model


def _write_clip(dest: Path, size: Size, seed: int, projection_dim: int) -> None:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # transformers annotates merges as list[str], but the tokenizers BPE it builds takes (a, b) pairs.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])  # type: ignore[misc]
    side = 224 if size == "full" else 32
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(dest)
    config = _clip_config(size, len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"], projection_dim)
    _seeded_model(CLIPModel, config, seed).save_pretrained(dest)


def _write_blip(dest: Path, size: Size, seed: int) -> None:
    from transformers import BertTokenizer, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    dest.mkdir(parents=True, exist_ok=True)
    vocab = blip_vocab()
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(dest / "vocab.txt"), bos_token="[DEC]", do_lower_case=True)
    side = 384 if size == "full" else 32
    images = BlipImageProcessor(size={"height": side, "width": side})
    BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(dest)
    model = _seeded_model(BlipForConditionalGeneration, _blip_config(size, vocab), seed)
    model.generation_config.max_new_tokens = 20 if size == "full" else 8
    model.save_pretrained(dest)


def make_checkpoints(
    root: Path,
    seed: int = 0,
    size: Size = "tiny",
    clip_name: str = DEFAULT_CLIP,
    blip_name: str = DEFAULT_BLIP,
    fashion_name: str = DEFAULT_FASHION,
) -> dict[str, Path]:
    """Write the three checkpoints under root and return {slot: checkpoint folder}."""
    paths = {"clip": root / clip_name, "blip": root / blip_name, "fashion": root / fashion_name}
    # Distinct seeds per slot so the CLIP and fashion encoders are different functions.
    _write_clip(paths["clip"], size, seed, projection_dim=32)
    _write_blip(paths["blip"], size, seed + 1)
    _write_clip(paths["fashion"], size, seed + 2, projection_dim=24)
    # safetensors writes its file 0600: a container's non-root server user could not read it.
    for folder in paths.values():
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return paths
