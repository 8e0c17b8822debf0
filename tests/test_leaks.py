"""Repeated load / encode_image / generate / close cycles do not leak.

Anonymous RSS is read from /proc/self/status after a warm-up (allocator pools, lazily imported modules
and caches settle in the first cycles) and must grow by less than 5 MB over 100 more cycles; no
mapping of the model's files may outlive the models.  A
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


def anon_rss_bytes() -> int:
    """Anonymous resident memory (heap, stacks): what a leak grows.  File-backed pages (the mapped weights)
    come and go with the page cache when other processes need memory, so they are counted apart."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("RssAnon:"))) * 1024


def mappings_of(model_dir) -> int:
    """How many of this process's mappings are files of the model directory (a leaked mapping stays)."""
    root = os.path.realpath(model_dir)
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().split(maxsplit=5)[-1].startswith(root + os.sep))


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
    before, mapped_before = anon_rss_bytes(), mappings_of(mha_dir)
    for _ in range(100):
        cycle(mha_dir, image)
    gc.collect()
    grown = anon_rss_bytes() - before
    print(f"anonymous RSS before {before / 2**20:.1f} MB, grown {grown / 2**20:.2f} MB over 100 cycles")
    assert grown < 5 * 2**20, f"anonymous RSS grew {grown / 2**20:.1f} MB over 100 cycles"
    assert mappings_of(mha_dir) == mapped_before, "closed models' weights are still mapped"
    with smolvision.load(mha_dir) as model:  # the check can see a mapping: an open model adds some
        assert mappings_of(mha_dir) > mapped_before and model.config is not None
