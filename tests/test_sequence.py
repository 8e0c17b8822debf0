"""Sequences (sv_seq through smolvision.Sequence): appending, truncating and batched decoding give what
the one-shot path gives.  The oracle is the one-shot path itself (sv_logits / sv_generate), which
test_decoder.py and test_generate.py hold to transformers; in precision fp32 the batched GEMMs may only
reorder sums, so logits agree to 1e-4 relative and greedy ids exactly."""
from __future__ import annotations

import numpy as np
import pytest

import smolvision
from smolvision.sequence import decode_batch

REL = 1e-4
STEPS = 5


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def make_prompt(rng, config, n: int, images: int = 0):
    """n random text ids, with `images` blocks of image tokens (random rows) in the middle."""
    ids = rng.integers(100, 1000, n).tolist()
    if not images:
        return ids, None
    k = config.image_seq_len
    block = [config.image_token_id] * k
    ids = ids[: n // 2] + block * images + ids[n // 2:]
    embeds = (rng.standard_normal((k * images, config.text.hidden_size)) * 0.5).astype(np.float32)
    return ids, embeds


@pytest.fixture(scope="module")
def fp32_models(mha_dir, gqa_dir):
    models = {"mha": smolvision.load(mha_dir, threads=2, precision="fp32"),
              "gqa": smolvision.load(gqa_dir, threads=2, precision="fp32")}
    yield models
    for model in models.values():
        model.close()


def one_shot(model, ids, embeds, steps: int = STEPS):
    """Greedy ids from sv_generate and the logits before each of them from sv_logits."""
    result = model.generate_ids(ids, embeds, max_tokens=steps, eos_token_ids=())
    logits = [model.logits(ids + result.token_ids[:t], image_embeds=embeds) for t in range(steps)]
    return result.token_ids, logits


@pytest.mark.parametrize("variant", ["mha", "gqa"])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_batched_decode_matches_one_shot(fp32_models, variant, width):
    model = fp32_models[variant]
    rng = np.random.default_rng(width)
    lengths, images = [7, 23, 3, 41][:width], [0, 1, 0, 2][:width]
    prompts = [make_prompt(rng, model.config, n, k) for n, k in zip(lengths, images)]
    expected = [one_shot(model, ids, embeds) for ids, embeds in prompts]

    seqs = [model.sequence() for _ in prompts]
    logits = np.stack([seq.prefill(ids, embeds) for seq, (ids, embeds) in zip(seqs, prompts)])
    got = [[] for _ in prompts]
    for t in range(STEPS):
        for r, (ids_ref, logits_ref) in enumerate(expected):
            assert relative_error(logits[r], logits_ref[t]) < REL, (r, t)
        picked = logits.argmax(axis=1)
        for r in range(width):
            got[r].append(int(picked[r]))
        if t + 1 < STEPS:
            logits = decode_batch(model, seqs, picked)
    assert got == [ids for ids, _ in expected]
    for seq, (ids, _), gen in zip(seqs, prompts, got):
        assert seq.tokens.tolist() == ids + gen[:-1]
        seq.close()


def test_truncate_and_resume_matches_one_shot(fp32_models):
    model = fp32_models["gqa"]
    rng = np.random.default_rng(7)
    a, embeds = make_prompt(rng, model.config, 20, images=1)
    b, c = rng.integers(100, 1000, 15).tolist(), rng.integers(100, 1000, 9).tolist()
    with model.sequence() as seq:
        seq.prefill(a + b, embeds)
        assert len(seq) == len(a + b)
        seq.truncate(len(a))
        assert seq.tokens.tolist() == a
        resumed = seq.prefill(c)
        assert seq.tokens.tolist() == a + c
        assert relative_error(resumed, model.logits(a + c, image_embeds=embeds)) < REL
        # ... and decoding goes on from the resumed state as generation from scratch would.
        expected, _ = one_shot(model, a + c, embeds, steps=3)
        ids = [int(resumed.argmax())]
        for _ in range(2):
            ids.append(int(decode_batch(model, [seq], [ids[-1]])[0].argmax()))
        assert ids == expected


def test_appending_in_pieces_matches_one_prompt(fp32_models):
    """Pieces with the image rows in a later piece, and a piece longer than a prefill chunk (512)."""
    model = fp32_models["mha"]
    rng = np.random.default_rng(3)
    first = rng.integers(100, 1000, 300).tolist()
    second, embeds = make_prompt(rng, model.config, 12, images=2)
    third = rng.integers(100, 1000, 700).tolist()
    with model.sequence() as seq:
        seq.prefill(first)
        seq.prefill(second, embeds)
        logits = seq.prefill(third)
        assert len(seq) == len(first + second + third)
    assert relative_error(logits, model.logits(first + second + third, image_embeds=embeds)) < REL


def test_memory_per_token_as_documented(fp32_models):
    model = fp32_models["gqa"]
    t = model.config.text
    per_token = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * 4 + 4  # fp32 cache + the id
    assert model.sequence_bytes_per_token == per_token
    with model.sequence() as seq:
        assert seq.nbytes == 0
        seq.prefill(list(range(100, 110)))
        assert seq.nbytes == 256 * per_token  # grown in steps of 256 positions
        seq.prefill(list(range(100, 400)))
        assert seq.nbytes == 512 * per_token


def test_bad_calls_are_refused(fp32_models, mha_dir):
    model = fp32_models["mha"]
    with smolvision.load(mha_dir, threads=1, precision="fp32") as other, model.sequence() as seq, \
            other.sequence() as foreign:
        seq.prefill([100, 101, 102])
        foreign.prefill([100, 101, 102])
        with pytest.raises(smolvision.InputError, match="another model"):
            decode_batch(model, [seq, foreign], [5, 6])
        with pytest.raises(smolvision.InputError, match="another model"):
            # the Python wrapper passes the sequence's own model; the C check is what refuses
            smolvision.sequence.decode_batch(other, [seq], [5])
        with pytest.raises(smolvision.InputError, match="truncate a sequence of 3 tokens to 4"):
            seq.truncate(4)
        with pytest.raises(smolvision.InputError, match="truncate"):
            seq.truncate(-1)
        with pytest.raises(smolvision.InputError, match="same sequence"):
            decode_batch(model, [seq, seq], [5, 6])
        with pytest.raises(smolvision.InputError, match="outside the vocabulary"):
            decode_batch(model, [seq], [model.config.text.vocab_size])
        with pytest.raises(smolvision.InputError, match="image tokens"):
            seq.prefill([model.config.image_token_id])
        window = model.config.text.max_position_embeddings
        with pytest.raises(smolvision.InputError, match="exceed the model's context"):
            seq.prefill([100] * (window - 2))
        assert seq.tokens.tolist() == [100, 101, 102]  # refused calls leave it as it was
    seq.close()  # idempotent
    with pytest.raises(smolvision.Error, match="closed"):
        len(seq)


def test_a_dropped_model_is_freed_at_once(gqa_dir):
    """Cached sequences do not keep their Model alive (no reference cycle): dropping it frees it."""
    import gc
    import weakref

    gc.disable()
    try:
        model = smolvision.load(gqa_dir, threads=1, precision="fp32")
        model.generate_ids([100, 101, 102], max_tokens=2, eos_token_ids=())
        with model.sequence() as seq:
            seq.prefill([100, 101])
        alive = weakref.ref(model)
        del model
        assert alive() is None  # by reference counting alone
    finally:
        gc.enable()
    with pytest.raises(smolvision.Error, match="closed|gone"):
        seq.prefill([5])
