"""What bench.py and its llama.cpp peer share: the phase sizes, the cache folder and the log line."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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

    @classmethod
    def quick(cls) -> Workload:
        return cls(prefill_tokens=32, short_prompt=8, short_decode=8, long_prompt=96, long_decode=4, e2e_tokens=4,
                   image_edge=96, repeats=1)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
