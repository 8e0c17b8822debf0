"""The text decoder and token-level generation against transformers.

Every parity test runs Idefics3ForConditionalGeneration (float32) on the same
tiny model directory in the same test and compares.
"""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Idefics3ForConditionalGeneration
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

import smolvision
from smolvision._native import ffi, lib

PROMPT = "User: Describe the picture of the old lighthouse on the cliff, and say what the weather is like.\nAssistant:"
TOLERANCE = 1e-3  # max |ours - reference| / max |reference|

_references: dict = {}


def reference(model_dir) -> Idefics3ForConditionalGeneration:
    key = str(model_dir)
    if key not in _references:
        ref = Idefics3ForConditionalGeneration.from_pretrained(key, torch_dtype=torch.float32)
        _references[key] = ref.eval()
    return _references[key]


def text_ids(model_dir, text: str = PROMPT) -> list:
    return AutoTokenizer.from_pretrained(str(model_dir))(text, add_special_tokens=False)["input_ids"]


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@torch.no_grad()
def reference_logits(model_dir, ids, pixel_values=None) -> np.ndarray:
    out = reference(model_dir)(input_ids=torch.tensor([ids]), pixel_values=pixel_values)
    return out.logits[0, -1].numpy()


@pytest.fixture(scope="module")
def gqa_model(gqa_dir):
    with smolvision.load(gqa_dir, precision="fp32") as model:
        yield model


@pytest.fixture(scope="module")
def mha_model(mha_dir):
    with smolvision.load(mha_dir, precision="fp32") as model:
        yield model


# ---- logits parity ----

def test_text_logits_match_transformers(any_model_dir):
    ids = text_ids(any_model_dir)
    with smolvision.load(any_model_dir, precision="fp32") as model:
        ours = model.logits(ids)
    ref = reference_logits(any_model_dir, ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert relative_error(ours, ref) < TOLERANCE


def image_prompt(model_dir, n_images: int = 2):
    """Text, n_images runs of image tokens (each image_seq_len long, wrapped
    in <fake_token_around_image>), more text; plus random pixel values."""
    ref = reference(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    fake = tok.convert_tokens_to_ids("<fake_token_around_image>")
    vision = ref.config.vision_config
    seq_len = (vision.image_size // vision.patch_size) ** 2 // ref.config.scale_factor ** 2
    ids = text_ids(model_dir, "User:")
    for _ in range(n_images):
        ids += [fake] + [ref.config.image_token_id] * seq_len + [fake]
    ids += text_ids(model_dir, "What is in these images?\nAssistant:")
    size = ref.config.vision_config.image_size
    pixels = torch.randn(1, n_images, 3, size, size, generator=torch.Generator().manual_seed(3))
    return ids, pixels


@torch.no_grad()
def image_features(model_dir, pixels) -> np.ndarray:
    """The reference's connector output for the images, [n_images * seq_len, text hidden]."""
    features = reference(model_dir).model.get_image_features(pixels, return_dict=True).pooler_output
    return torch.cat(list(features)).numpy()


def test_image_token_logits_match_transformers(any_model_dir):
    ids, pixels = image_prompt(any_model_dir)
    embeds = image_features(any_model_dir, pixels)
    with smolvision.load(any_model_dir, precision="fp32") as model:
        ours = model.logits(ids, image_embeds=embeds)
        # The rows must land in order: swapping the two images changes the answer.
        half = len(embeds) // 2
        swapped = model.logits(ids, image_embeds=np.concatenate([embeds[half:], embeds[:half]]))
    ref = reference_logits(any_model_dir, ids, pixel_values=pixels)
    assert relative_error(ours, ref) < TOLERANCE
    assert relative_error(swapped, ref) > 10 * TOLERANCE


# Prefill runs in chunks of at most SV_PREFILL_CHUNK rows (smolvision.h); the decoder
# state is the KV cache plus scratch linear in the context:
#   4 * (2 * layers * kv_heads * head_dim * capacity                       KV cache
#        + chunk * (2 * hidden + 2 * heads * head_dim + 2 * kv_heads * head_dim
#                   + 2 * intermediate + head_dim) + head_dim / 2          per-chunk rows, RoPE
#        + group * chunk * (2 * head_dim + capacity)                       one GQA group's Q, P, out
#        + head_dim * capacity + threads * capacity + vocab)               V^T of the keys, decode rows, logits
#   + 4 * capacity + 16 * chunk                                            token history, each row's position and cache
# with capacity = the context rounded up to 256, chunk = min(SV_PREFILL_CHUNK, capacity)
# and group = heads / kv_heads: no [n, n] buffer exists at any length.
def decoder_state_bound(config, n_tokens: int, threads: int) -> int:
    t = config.text
    capacity = min(-(-n_tokens // 256) * 256, t.max_position_embeddings)
    chunk = min(lib.SV_PREFILL_CHUNK, capacity)
    group = t.num_attention_heads // t.num_key_value_heads
    q_dim, kv_dim = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_row = 2 * t.hidden_size + 2 * q_dim + 2 * kv_dim + 2 * t.intermediate_size + t.head_dim
    floats = (2 * t.num_hidden_layers * kv_dim * capacity + chunk * per_row + t.head_dim // 2
              + group * chunk * (2 * t.head_dim + capacity)
              + t.head_dim * capacity + threads * capacity + t.vocab_size)
    return 4 * floats + 4 * capacity + 16 * chunk


def test_long_prompt_matches_transformers_with_linear_scratch(gqa_dir):
    n = 6000  # several chunks (SV_PREFILL_CHUNK), so the scratch's n x chunk terms stay below n x n
    base = text_ids(gqa_dir, PROMPT * 4)
    ids = (base * (n // len(base) + 1))[:n]
    threads = 2
    with smolvision.load(gqa_dir, threads=threads, precision="fp32") as model:
        ours = model.logits(ids)
        state_bytes = lib.sv_decoder_state_bytes(model._ptr)
        config = model.config
    ref = reference_logits(gqa_dir, ids)
    assert relative_error(ours, ref) < TOLERANCE
    assert 0 < state_bytes <= decoder_state_bound(config, n, threads)
    assert state_bytes < 4 * n * n  # less than a single head's score matrix would take


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    """A decoder off the beaten path: F16 weights, attention and MLP biases,
    one KV head for four query heads, head_dim 24 != hidden / heads."""
    import modelgen

    spec = dict(modelgen.VARIANTS["gqa"], dtype="float16", tie=False)
    spec["text"] = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=24, attention_bias=True, mlp_bias=True,
                        rope_theta=50000.0, rms_norm_eps=1e-6, max_position_embeddings=4096)
    modelgen.VARIANTS["decoder-odd"] = spec
    try:
        return modelgen.write_model(tmp_path_factory.mktemp("decoder-odd"), "decoder-odd")
    finally:
        del modelgen.VARIANTS["decoder-odd"]


def test_biases_f16_mqa_and_wide_heads_match_transformers(odd_dir):
    base = text_ids(odd_dir, PROMPT * 2)
    long_ids = (base * 20)[:600]  # two prefill chunks of 300
    with smolvision.load(odd_dir, precision="fp32") as model:
        assert model.config.text.attention_bias and model.config.text.mlp_bias
        assert model.config.text.head_dim * model.config.text.num_attention_heads != model.config.text.hidden_size
        for ids in (base, long_ids):
            assert relative_error(model.logits(ids), reference_logits(odd_dir, ids)) < TOLERANCE
        result = model.generate_ids(base, max_tokens=16, eos_token_ids=())
    assert result.token_ids == reference_generate(odd_dir, base, max_new_tokens=16, eos_token_id=None)


# ---- greedy generation parity ----

@torch.no_grad()
def reference_generate(model_dir, ids, pixel_values=None, **kwargs) -> list:
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values
    out = reference(model_dir).generate(input_ids=torch.tensor([ids]), do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def test_greedy_generation_matches_transformers(any_model_dir):
    ids = text_ids(any_model_dir)
    with smolvision.load(any_model_dir, precision="fp32") as model:
        result = model.generate_ids(ids, max_tokens=32)
        eos = model.eos_token_ids
    expected = reference_generate(any_model_dir, ids, max_new_tokens=32, eos_token_id=list(eos))
    assert result.token_ids == expected
    if expected and expected[-1] in eos:
        assert result.finish_reason == "stop"
    else:
        assert len(expected) == 32 and result.finish_reason == "length"


def test_greedy_generation_stops_on_eos_like_transformers(gqa_model, gqa_dir):
    """Makes an id that greedy decoding produces mid-way an EOS id, so both stop there."""
    ids = text_ids(gqa_dir, "The capital of France is")
    free = gqa_model.generate_ids(ids, max_tokens=12, eos_token_ids=())
    stop_id = free.token_ids[5]
    result = gqa_model.generate_ids(ids, max_tokens=12, eos_token_ids=[stop_id])
    expected = reference_generate(gqa_dir, ids, max_new_tokens=12, eos_token_id=[stop_id])
    assert result.token_ids == expected == free.token_ids[:free.token_ids.index(stop_id) + 1]
    assert result.finish_reason == "stop"
    assert result.timings.generated_tokens == len(expected) and result.timings.prompt_tokens == len(ids)


def test_greedy_generation_after_images_matches_transformers(mha_dir):
    ids, pixels = image_prompt(mha_dir, n_images=1)
    embeds = image_features(mha_dir, pixels)
    with smolvision.load(mha_dir, precision="fp32") as model:
        result = model.generate_ids(ids, image_embeds=embeds, max_tokens=16, eos_token_ids=())
    expected = reference_generate(mha_dir, ids, pixel_values=pixels, max_new_tokens=16, eos_token_id=None)
    assert result.token_ids == expected


def test_repetition_penalty_matches_transformers(any_model_dir):
    ids = text_ids(any_model_dir, "one two three one two three one two")
    penalty = 2.0
    with smolvision.load(any_model_dir, precision="fp32") as model:
        result = model.generate_ids(ids, max_tokens=10, repetition_penalty=penalty, eos_token_ids=())
        # Step by step: the processor applied to our own logits picks the same ids.
        for i, chosen in enumerate(result.token_ids):
            context = ids + result.token_ids[:i]
            scores = torch.from_numpy(model.logits(context))[None]
            penalised = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([context]), scores)
            assert int(penalised.argmax()) == chosen
        plain = model.generate_ids(ids, max_tokens=10, eos_token_ids=())
    assert result.token_ids != plain.token_ids  # the penalty changed something
    expected = reference_generate(any_model_dir, ids, max_new_tokens=10, repetition_penalty=penalty,
                                  eos_token_id=None)
    assert result.token_ids == expected


# ---- sampling ----

SAMPLE_PROMPT = "Once upon a time, in a small village by the sea, there"


def test_sampling_is_reproducible_per_seed_and_varies_across_seeds(gqa_model, gqa_dir):
    ids = text_ids(gqa_dir, SAMPLE_PROMPT)
    opts = dict(max_tokens=12, temperature=3.0, top_p=0.95, eos_token_ids=())
    first = gqa_model.generate_ids(ids, seed=7, **opts).token_ids
    assert gqa_model.generate_ids(ids, seed=7, **opts).token_ids == first
    others = {tuple(gqa_model.generate_ids(ids, seed=s, **opts).token_ids) for s in range(4)}
    assert len(others | {tuple(first)}) > 1


def test_top_k_1_and_tiny_top_p_and_full_min_p_equal_greedy(gqa_model, gqa_dir):
    ids = text_ids(gqa_dir, SAMPLE_PROMPT)
    greedy = gqa_model.generate_ids(ids, max_tokens=12, eos_token_ids=()).token_ids
    for opts in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        sampled = gqa_model.generate_ids(ids, max_tokens=12, temperature=1.5, seed=1, eos_token_ids=(), **opts)
        assert sampled.token_ids == greedy, opts


@pytest.mark.parametrize("opts", [dict(temperature=8.0, top_k=40, top_p=0.9, min_p=0.02),
                                  dict(temperature=4.0, top_p=0.5), dict(temperature=3.0, min_p=0.05),
                                  dict(temperature=6.0, top_k=5)])
def test_sampled_ids_stay_inside_transformers_filters(gqa_model, gqa_dir, opts):
    """Draws the first id under many seeds: each must survive transformers'
    temperature -> top-k -> top-p -> min-p warpers applied to our logits."""
    ids = text_ids(gqa_dir, SAMPLE_PROMPT)
    scores = torch.from_numpy(gqa_model.logits(ids))[None]
    context = torch.tensor([ids])
    warpers = [TemperatureLogitsWarper(opts["temperature"])]
    if "top_k" in opts:
        warpers.append(TopKLogitsWarper(opts["top_k"]))
    if "top_p" in opts:
        warpers.append(TopPLogitsWarper(opts["top_p"]))
    if "min_p" in opts:
        warpers.append(MinPLogitsWarper(opts["min_p"]))
    for warper in warpers:
        scores = warper(context, scores)
    allowed = set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())
    assert 1 < len(allowed) < gqa_model.config.text.vocab_size // 4  # the filter bites
    drawn = {gqa_model.generate_ids(ids, max_tokens=1, seed=seed, **opts).token_ids[0] for seed in range(60)}
    assert drawn <= allowed
    assert len(drawn) > 1


# ---- callbacks and streaming ----

def test_callback_cancel_stops_at_once(gqa_model, gqa_dir):
    seen = []

    def on_token(token_id: int) -> bool:
        seen.append(token_id)
        return len(seen) == 3

    result = gqa_model.generate_ids(text_ids(gqa_dir), max_tokens=20, eos_token_ids=(), on_token=on_token)
    assert result.finish_reason == "cancelled"
    assert result.token_ids == seen and len(seen) == 3


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_callback_exception_propagates_and_model_still_works(gqa_model, gqa_dir, error):
    ids = text_ids(gqa_dir)
    before = gqa_model.logits(ids)
    calls = []

    def on_token(token_id: int) -> None:
        calls.append(token_id)
        if len(calls) == 2:
            raise error

    with pytest.raises(type(error)) as info:
        gqa_model.generate_ids(ids, max_tokens=20, eos_token_ids=(), on_token=on_token)
    assert info.value is error
    assert len(calls) == 2  # generation stopped right there
    np.testing.assert_array_equal(gqa_model.logits(ids), before)
    assert len(gqa_model.generate_ids(ids, max_tokens=4, eos_token_ids=()).token_ids) == 4


def test_ctrl_c_during_generation_stops_it(gqa_model, gqa_dir):
    """A real SIGINT: Python runs its handler in the next token callback, which stops the C loop.

    The signal is sent from the 5th token's callback, so it arrives while tokens are still being
    generated however fast the machine; Python's own SIGINT handler is installed for the test, since
    a runner started in the background (`cmd &`) inherits SIGINT ignored and Python then keeps it so."""
    ids = text_ids(gqa_dir)
    seen = []

    def on_token(token_id: int) -> None:
        seen.append(token_id)
        if len(seen) == 5:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            gqa_model.generate_ids(ids, max_tokens=8000, eos_token_ids=(), on_token=on_token)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert 5 <= len(seen) < 50  # stopped within a few tokens of the signal, far from 8000
    assert len(gqa_model.generate_ids(ids, max_tokens=3, eos_token_ids=()).token_ids) == 3


def test_a_call_from_inside_a_callback_runs(gqa_model, gqa_dir):
    # Callbacks run on the caller's thread between the engine's steps, not inside a C call, so they may
    # use the model while their generation goes on.
    ids = text_ids(gqa_dir)
    expected = gqa_model.logits(ids)
    seen = []
    result = gqa_model.generate_ids(ids, max_tokens=3, eos_token_ids=(),
                                    on_token=lambda token_id: seen.append(gqa_model.logits(ids)))
    assert len(seen) == 3 and all(np.array_equal(logits, expected) for logits in seen)
    assert result.token_ids == gqa_model.generate_ids(ids, max_tokens=3, eos_token_ids=()).token_ids


def test_stream_ids_yields_the_generated_ids(gqa_model, gqa_dir):
    ids = text_ids(gqa_dir)
    expected = gqa_model.generate_ids(ids, max_tokens=10, eos_token_ids=()).token_ids
    assert list(gqa_model.stream_ids(ids, max_tokens=10, eos_token_ids=())) == expected


def test_closing_a_stream_early_stops_the_engine(gqa_model, gqa_dir, monkeypatch):
    # The token loop is held after its 4th id until the consumer is about to close the stream, so it
    # cannot finish on its own first; once closed it must stop, not run on to max_tokens.
    ids = text_ids(gqa_dir)
    produced = []
    closing = threading.Event()
    decode = gqa_model._decode

    def counted(prompt, params, on_token, cancel=None):
        def on_id(token_id):
            produced.append(token_id)
            if len(produced) == 4:
                closing.wait()
            return on_token(token_id)
        return decode(prompt, params, on_id, cancel)

    monkeypatch.setattr(gqa_model, "_decode", counted)
    stream = gqa_model.stream_ids(ids, max_tokens=4000, eos_token_ids=())
    head = [next(stream) for _ in range(3)]
    closing.set()
    stream.close()
    assert head == produced[:3]
    assert len(produced) < 4000  # the worker stopped instead of taking 4000 ids
    assert gqa_model.scheduler_stats().running == 0  # the engine ended the call before close() returned
    assert gqa_model._lock.acquire(blocking=False)  # and released the model
    gqa_model._lock.release()


def test_stream_ids_checks_arguments_eagerly(gqa_model):
    with pytest.raises(smolvision.InputError):
        gqa_model.stream_ids([1, 2], max_tokens=-1)


# ---- refusals ----

def test_prompt_plus_max_tokens_beyond_context_is_refused(gqa_model):
    limit = gqa_model.config.text.max_position_embeddings
    with pytest.raises(smolvision.InputError, match="max_position_embeddings"):
        gqa_model.generate_ids([1, 2, 3], max_tokens=limit - 2)
    assert len(gqa_model.generate_ids([1, 2, 3], max_tokens=2, eos_token_ids=()).token_ids) == 2


@pytest.mark.parametrize("ids", [[-1], [5, 49280], [2**40], [], [[1, 2]], [1.5], ["a"]])
def test_bad_ids_are_refused(gqa_model, ids):
    with pytest.raises(smolvision.InputError):
        gqa_model.logits(ids)
    with pytest.raises(smolvision.InputError):
        gqa_model.generate_ids(ids, max_tokens=2)


def test_c_api_refuses_bad_ids_and_image_row_mismatch(gqa_model):
    """The C checks themselves, bypassing Python's."""
    vocab = gqa_model.config.text.vocab_size
    out = ffi.new("float[]", vocab)
    for ids in ([-1], [vocab], [3, vocab + 5]):
        assert lib.sv_logits(gqa_model._ptr, ffi.new("int32_t[]", ids), len(ids), ffi.NULL, 0, out) == lib.SV_ERR_ARG
        assert b"outside the vocabulary" in ffi.string(lib.sv_last_error())
    image = gqa_model.config.image_token_id
    rows = ffi.new("float[]", 2 * gqa_model.config.text.hidden_size)
    ids = ffi.new("int32_t[]", [1, image, 2])
    assert lib.sv_logits(gqa_model._ptr, ids, 3, rows, 2, out) == lib.SV_ERR_ARG
    assert b"1 image tokens" in ffi.string(lib.sv_last_error())


def test_image_row_count_must_match(gqa_model):
    image = gqa_model.config.image_token_id
    hidden = gqa_model.config.text.hidden_size
    with pytest.raises(smolvision.InputError, match="image tokens"):
        gqa_model.logits([1, image, image, 2], image_embeds=np.zeros((1, hidden), np.float32))
    with pytest.raises(smolvision.InputError, match="image tokens"):
        gqa_model.logits([1, image, 2])
    with pytest.raises(smolvision.InputError, match="shape"):
        gqa_model.logits([1, image, 2], image_embeds=np.zeros((1, hidden + 1), np.float32))
    with pytest.raises(smolvision.InputError):
        gqa_model.logits([1, image, 2], image_embeds="not an array")


@pytest.mark.parametrize("opts", [dict(max_tokens=-1), dict(temperature=-0.5), dict(temperature=float("nan")),
                                  dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2), dict(min_p=1.5),
                                  dict(repetition_penalty=0.0), dict(seed=-1), dict(eos_token_ids=["x"]),
                                  dict(beams=4)])
def test_bad_sampling_options_are_refused(gqa_model, opts):
    with pytest.raises(smolvision.InputError):
        gqa_model.generate_ids([1, 2, 3], **opts)


def test_eos_ids_come_from_generation_config(gqa_model, gqa_dir):
    import json
    expected = json.loads((gqa_dir / "generation_config.json").read_text())["eos_token_id"]
    assert list(gqa_model.eos_token_ids) == (expected if isinstance(expected, list) else [expected])


def test_own_image_features_feed_the_decoder(any_model_dir):
    """End to end below the preprocessing: our vision encoder's rows in our decoder."""
    ids, pixels = image_prompt(any_model_dir)
    with smolvision.load(any_model_dir, precision="fp32") as model:
        embeds = model.encode_pixel_values(pixels[0].numpy())
        ours = model.logits(ids, image_embeds=embeds)
    assert relative_error(ours, reference_logits(any_model_dir, ids, pixel_values=pixels)) < TOLERANCE


@pytest.mark.slow
def test_real_weights_greedy_chat_matches_transformers(real_dir):
    """SmolLM2-135M-Instruct's real weights: the same 32 greedy ids as transformers, and a sensible answer."""
    tok = AutoTokenizer.from_pretrained(str(real_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    with smolvision.load(real_dir, precision="fp32") as model:
        result = model.generate_ids(ids, max_tokens=32)
        assert relative_error(model.logits(ids), reference_logits(real_dir, ids)) < TOLERANCE
        eos = model.eos_token_ids
    assert result.token_ids == reference_generate(real_dir, ids, max_new_tokens=32, eos_token_id=list(eos))
    assert "Paris" in tok.decode(result.token_ids)
