"""Prefix reuse and the image cache (Model's cache_bytes): a prompt continuing a cached sequence
computes only the rest, and gives the same greedy ids as with the cache off (precision fp32)."""
from __future__ import annotations

import numpy as np
import pytest

import smolvision
from helpers import write_image

GREEDY = dict(max_tokens=4, eos_token_ids=())


def ids_of(rng, n: int) -> list[int]:
    return rng.integers(100, 1000, n).tolist()


@pytest.fixture(scope="module")
def plain(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0) as model:
        yield model


@pytest.fixture
def cached(gqa_dir):
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        yield model


def test_hit_miss_partial_hit_and_truncation(cached, plain):
    rng = np.random.default_rng(0)
    a, b = ids_of(rng, 30), ids_of(rng, 10)
    first = cached.generate_ids(a, **GREEDY)
    assert first.cached_tokens == 0
    # hit: the next turn continues prompt + answer (the answer's last id was never computed)
    follow = a + first.token_ids + b
    second = cached.generate_ids(follow, **GREEDY)
    assert second.cached_tokens == len(a) + len(first.token_ids) - 1
    assert second.token_ids == plain.generate_ids(follow, **GREEDY).token_ids
    assert second.prompt_tokens == len(follow)
    # the same prompt again: everything but its last token
    again = cached.generate_ids(follow, **GREEDY)
    assert again.cached_tokens == len(follow) - 1 and again.token_ids == second.token_ids
    # miss: nothing in common
    other = [a[0] + 1] + a[1:]
    assert cached.generate_ids(other, **GREEDY).cached_tokens == 0
    # partial hit: the first 12 tokens; the sequence is truncated there and extended differently...
    branch = a[:12] + ids_of(rng, 8)
    hit = cached.generate_ids(branch, **GREEDY)
    assert hit.cached_tokens == 12
    assert hit.token_ids == plain.generate_ids(branch, **GREEDY).token_ids
    # ... so it no longer holds the old continuation: `follow` shares only those 12 now, with it
    # (the `other` sequence shares nothing with it)
    assert cached.generate_ids(follow, **GREEDY).cached_tokens == 12


def test_sampling_settings_see_the_whole_prompt(cached, plain):
    """The repetition penalty and seeded sampling over a cached prefix act as on the full prompt."""
    rng = np.random.default_rng(1)
    a = ids_of(rng, 40)
    options = dict(max_tokens=6, eos_token_ids=(), temperature=0.8, top_k=20, seed=7, repetition_penalty=1.5)
    cached.generate_ids(a, **GREEDY)
    prompt = a + ids_of(rng, 5)
    result = cached.generate_ids(prompt, **options)
    assert result.cached_tokens == len(a)
    assert result.token_ids == plain.generate_ids(prompt, **options).token_ids


def test_image_rows_must_match_for_a_hit(cached, plain):
    config = cached.config
    rng = np.random.default_rng(2)
    k = config.image_seq_len
    ids = ids_of(rng, 5) + [config.image_token_id] * k + ids_of(rng, 6)
    rows = [(rng.standard_normal((k, config.text.hidden_size)) * 0.5).astype(np.float32) for _ in range(2)]
    cached.generate_ids(ids, rows[0], **GREEDY)
    same = cached.generate_ids(ids, rows[0].copy(), **GREEDY)
    assert same.cached_tokens == len(ids) - 1
    different = cached.generate_ids(ids, rows[1], **GREEDY)
    assert different.cached_tokens == 5  # up to the first image token
    assert different.token_ids == plain.generate_ids(ids, rows[1], **GREEDY).token_ids


def test_eviction_under_a_small_budget(gqa_dir):
    rng = np.random.default_rng(3)
    p, q = ids_of(rng, 20), ids_of(rng, 20)
    q[0] = p[0] + 1
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=0) as probe:
        one = 256 * probe.sequence_bytes_per_token  # one short sequence's capacity
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=one) as model:
        model.generate_ids(p, **GREEDY)
        assert model.cached_bytes() == one
        assert model.generate_ids(q, **GREEDY).cached_tokens == 0  # p is evicted to make room
        assert model.cached_bytes() == one
        assert model.generate_ids(p, **GREEDY).cached_tokens == 0
        assert model.generate_ids(p, **GREEDY).cached_tokens == len(p) - 1
    with smolvision.load(gqa_dir, threads=2, precision="fp32", cache_bytes=one - 1) as model:
        model.generate_ids(p, **GREEDY)
        assert model.cached_bytes() == 0  # nothing fits: nothing kept
        assert model.generate_ids(p, **GREEDY).cached_tokens == 0


def test_multi_turn_messages_reuse_the_conversation(cached, plain, tmp_path):
    photo = write_image(tmp_path / "photo.png")
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    first = cached.generate(messages=turn, images=[photo], max_tokens=6)
    assert first.cached_tokens == 0
    conversation = turn + [{"role": "assistant", "content": first.text},
                           {"role": "user", "content": "And the colours?"}]
    second = cached.generate(messages=conversation, images=[photo], max_tokens=6)
    reference = plain.generate(messages=conversation, images=[photo], max_tokens=6)
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert second.text == reference.text and second.token_ids == reference.token_ids


def test_bad_cache_bytes_refused(gqa_dir):
    for bad in (-1, 1.5, "1G", True):
        with pytest.raises(smolvision.InputError, match="cache_bytes"):
            smolvision.load(gqa_dir, cache_bytes=bad)


def test_image_cache_encodes_only_new_images(cached, plain, tmp_path):
    seen = write_image(tmp_path / "seen.png", seed=1)
    new = write_image(tmp_path / "new.png", seed=2)
    first = cached.generate("Describe it.", images=[seen], max_tokens=3)
    assert first.cached_images == 0 and first.timings.image_encode_s > 0
    again = cached.generate("What colour is it?", images=[seen], max_tokens=3)
    assert again.cached_images == 1 and again.timings.image_encode_s == 0
    # two images, only the first cached: the second is encoded (and its features are the right ones)
    both = cached.generate("Compare them.", images=[seen, new], max_tokens=5)
    assert both.cached_images == 1 and both.timings.image_encode_s > 0
    reference = plain.generate("Compare them.", images=[seen, new], max_tokens=5)
    assert both.token_ids == reference.token_ids and reference.cached_images == 0
    # the same pixels under other preprocessing settings are another entry
    unsplit = cached.generate("Describe it.", images=[seen], max_tokens=3, do_image_splitting=False)
    assert unsplit.cached_images == 0


def test_image_cache_skips_the_vision_encoder(gqa_dir, tmp_path):
    photo = write_image(tmp_path / "photo.png", seed=3)
    with smolvision.load(gqa_dir, threads=2, precision="fp32", profile=True) as model:
        model.generate("Describe it.", images=[photo], max_tokens=2)
        assert model.profile().phases["vision"].calls > 0
        model.reset_profile()
        model.generate("Describe it again.", images=[photo], max_tokens=2)
        assert model.profile().phases["vision"].calls == 0


def test_the_same_prompt_finished_twice_at_once_is_cached_once(gqa_dir, tmp_path):
    """Two calls of one prompt, decoded together, both miss the prefix cache; the second to finish
    replaces the first's sequence instead of keeping a copy (and the image's features are kept once)."""
    photo = write_image(tmp_path / "twice.png", seed=4)
    request = dict(prompt="Describe it.", images=[photo], max_tokens=3)
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        model.generate(**request)
        alone = model.cached_bytes()
    with smolvision.load(gqa_dir, threads=2, precision="fp32") as model:
        first, second = model.generate_many([request, request])
        assert first.cached_tokens == second.cached_tokens == 0  # both read the whole prompt
        assert model.scheduler_stats().decode_rows > model.scheduler_stats().decode_steps  # they ran together
        assert model.cached_bytes() == alone


def test_state_cache_replaces_what_a_new_entry_supersedes():
    """StateCache alone: a sequence whose key is a prefix of a new one's goes (any prompt shares at least
    as much with the new one), one that diverges stays; an image's features put twice are kept once."""
    from smolvision._states import StateCache

    class FakeSequence:
        nbytes = 100
        closed = False

        def close(self) -> None:
            self.closed = True

    cache = StateCache(budget=10_000)
    short, diverging, longer = FakeSequence(), FakeSequence(), FakeSequence()
    cache.put_sequence(np.array([1, 2, 3]), short)
    cache.put_sequence(np.array([1, 2, 4, 5]), diverging)
    cache.put_sequence(np.array([1, 2, 3, 9]), longer)
    assert short.closed and not diverging.closed and cache.nbytes == 200
    assert cache.take_sequence(np.array([1, 2, 3, 7])) == (longer, 3)
    features = np.zeros(25, np.float32)
    cache.put_image(b"key", features)
    cache.put_image(b"key", features.copy())
    assert cache.nbytes == 100 + features.nbytes
