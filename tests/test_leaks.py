"""Repeated load / encode_image / generate / close cycles do not leak.

RSS is read from /proc/self/statm after a warm-up (allocator pools, lazily imported modules and
caches settle in the first cycles) and must grow by less than 5 MB over 100 more cycles.  A
leak of one model's decoder state, tokenizer, weights mapping or image features per cycle would
be far larger.  The C-level check under LeakSanitizer is tools/leakcheck.c (see the README's Reliability section).
"""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import smolvision

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cycle(model_dir, image: np.ndarray) -> None:
    with smolvision.load(model_dir, threads=2) as model:
        features = model.encode_image(image)
        assert features.shape[1] == model.config.text.hidden_size
        result = model.generate("What is this?", images=[image], max_tokens=4, temperature=0.7, seed=1)
        assert len(result.token_ids) >= 1
        stream, pieces = model.stream("Hi", max_tokens=3), []
        while True:
            try:
                pieces.append(next(stream))
            except StopIteration as end:  # the generator returns the Result
                assert "".join(pieces) == end.value.text and len(end.value.token_ids) >= 1
                break


@pytest.mark.slow
def test_load_encode_generate_close_cycles_do_not_grow_rss(mha_dir):
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for _ in range(10):
        cycle(mha_dir, image)
    gc.collect()
    before = rss_bytes()
    for _ in range(100):
        cycle(mha_dir, image)
    gc.collect()
    grown = rss_bytes() - before
    print(f"RSS before {before / 2**20:.1f} MB, grown {grown / 2**20:.2f} MB over 100 cycles")
    assert grown < 5 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over 100 cycles"
