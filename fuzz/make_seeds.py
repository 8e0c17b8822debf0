"""Writes small seed corpora for the fuzz targets into DIR/<target>/ (default
fuzz/corpus), from the test fixtures: the SmolLM2 tokenizer.json and the
SmolVLM config in ~/.cache/smolvision-tests, plus hand-made safetensors files.
Existing files are kept (seeds are named by content hash), so re-running only
adds.  Nothing here is committed but this script."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

CACHE = Path(os.environ.get("SV_TEST_CACHE", Path.home() / ".cache" / "smolvision-tests"))
TOKENIZER = Path(os.environ.get("SV_FUZZ_TOKENIZER", CACHE / "smollm2-tokenizer" / "tokenizer.json"))
CONFIG = CACHE / "smolvlm-smollm2-135m-v1" / "config.json"
MAX_LEN = 65536


def put(root: Path, target: str, data: bytes) -> None:
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data[:MAX_LEN])


def safetensors_file(tensors: dict, metadata: dict | None = None) -> bytes:
    """A safetensors file from {name: (dtype, shape, raw bytes)}."""
    header, blobs, at = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def small_tokenizer(full: dict, n_vocab: int = 400) -> dict:
    """The real tokenizer.json cut to its first n_vocab tokens and the merges among them."""
    tok = json.loads(json.dumps(full))
    vocab = {k: v for k, v in full["model"]["vocab"].items() if v < n_vocab}
    merges = []
    for m in full["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    tok["added_tokens"] = [t for t in full.get("added_tokens", []) if t["id"] < n_vocab]
    return tok


def main(root: Path) -> None:
    # safetensors
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    for tensors, meta in [
        ({"a": ("F32", [2, 2], f32)}, None),
        ({"a": ("F32", [4], f32), "b": ("BF16", [2, 1], b"\x80\x3f\x00\x40")}, {"format": "pt"}),
        ({"w": ("F16", [0, 3], b""), "x": ("I64", [1], b"\x01" * 8), "y": ("U8", [3], b"abc")}, None),
        ({"model.text_model.norm.weight": ("F32", [4], f32)}, {}),
        ({}, {"format": "pt"}),
    ]:
        put(root, "safetensors", safetensors_file(tensors, meta))
    # JSON and config
    texts = [b'{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\ud83d\\ude00\\n"]}', b"[[[[]]]]", b'"\\u0000"',
             b"-0.0e+1", b'{"a":{"b":{"c":[1,2,{"d":"e"}]}}}']
    config = CONFIG.read_bytes() if CONFIG.exists() else None
    if config:
        texts.append(config)
        put(root, "config", config)
        cfg = json.loads(config)
        cfg["text_config"]["num_key_value_heads"] = 1
        cfg["vision_config"]["image_size"] = 28
        cfg["vision_config"]["patch_size"] = 14
        cfg["scale_factor"] = 1
        put(root, "config", json.dumps(cfg).encode())
        put(root, "config", json.dumps({"model_type": "idefics3", "vision_config": {}, "text_config": {},
                                        "image_token_id": 5}).encode())
    for t in texts:
        put(root, "json", t)
    # tokenizer
    samples = ["Hello world!", "User:<image>What is in this image?<end_of_utterance>\nAssistant:",
               "  leading spaces\n\n\ttabs\r\n", "123456789 3.14159 1e10", "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001F600",
               "<fake_token_around_image><global-img><row_1_col_1>", "it's we'll they've I'm"]
    for s in samples:
        put(root, "tokenize", s.encode())
    put(root, "tokenize", b"\xff\xfe bad \xc3 utf8 \xed\xa0\x80")
    if TOKENIZER.exists():
        full = json.loads(TOKENIZER.read_text())
        small = small_tokenizer(full)
        put(root, "tokenizer_load", json.dumps(small).encode())
        put(root, "tokenizer_load", json.dumps(small, indent=1).encode())
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(TOKENIZER))
            for skip, s in enumerate(samples):
                ids = tok.encode(s).ids
                put(root, "detokenize", bytes([skip & 1]) + b"".join(struct.pack("<H", i & 0xFFFF) for i in ids))
        except ImportError:
            pass
    put(root, "detokenize", b"\x00" + struct.pack("<4H", 0, 1, 2, 60000))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "corpus"))
