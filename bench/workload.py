"""What bench.py, its sequence rows and its llama.cpp peer share: the phase sizes, the inputs, the cache
folder and the log line."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("SMOLVISION_BENCH_CACHE", Path.home() / ".cache" / "smolvision-bench"))


@dataclass(frozen=True)
class Workload:
    """Sizes of the phases (prompt lengths in tokens)."""

    prefill_tokens: int = 512
    short_prompt: int = 16
    short_decode: int = 64
    long_prompt: int = 1536
    long_decode: int = 32
    e2e_tokens: int = 32
    image_edge: int = 384
    repeats: int = 2  # timed runs of the vision encode; the best counts
    # bench.py --sequences: aggregate decode (each sequence its own prompt, then decode steps of all)
    batch_widths: tuple[int, ...] = (1, 2, 4, 8)
    batch_prompt: int = 256
    batch_decode: int = 32
    # ... and the peak RSS row: this many sequences of this many tokens
    rss_sequences: int = 8
    rss_tokens: int = 2048

    @classmethod
    def quick(cls) -> Workload:
        return cls(prefill_tokens=32, short_prompt=8, short_decode=8, long_prompt=96, long_decode=4, e2e_tokens=4,
                   image_edge=96, repeats=1, batch_prompt=16, batch_decode=4, rss_tokens=64)


def prompt_ids(config: dict, n: int, seed: int) -> np.ndarray:
    """n random ordinary token ids (no special or image ids), the same for every engine."""
    rng = np.random.default_rng(seed)
    vocab = config["text_config"]["vocab_size"]
    ids = rng.integers(100, min(vocab, 49152) - 1, size=n)
    ids[ids == config["image_token_id"]] = 100
    return ids.astype(np.int64)


def test_image(edge: int) -> np.ndarray:
    """A edge x edge RGB uint8 image (random noise: the content does not change the cost)."""
    return np.random.default_rng(2).integers(0, 256, (edge, edge, 3), dtype=np.uint8)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tile_pixels(config: dict) -> np.ndarray:
    """One normalized tile, float32 [1, 3, S, S] in [-1, 1]."""
    size = config["vision_config"]["image_size"]
    return np.random.default_rng(1).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies BF16 natively (AVX512_BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def peer_dtype_name() -> str:
    """The dtype a peer runs the follow-up turn in: BF16 where the CPU has native BF16 (as oneDNN then uses
    it), else FP32, since there BF16 is emulated and several times slower: each peer at its fastest."""
    return "BF16" if cpu_has_native_bf16() else "FP32"

