"""The text-level API end to end against transformers: messages and images in, text out.

Each parity test runs Idefics3Processor + Idefics3ForConditionalGeneration (float32) on the same
model directory in the same test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Idefics3ForConditionalGeneration

import smolvision

TOLERANCE = 1e-3  # max |ours - reference| / max |reference|
_references: dict = {}


def reference(model_dir):
    key = str(model_dir)
    if key not in _references:
        _references[key] = (Idefics3ForConditionalGeneration.from_pretrained(key, torch_dtype=torch.float32).eval(),
                            AutoProcessor.from_pretrained(key))
    return _references[key]


def photo(name: str = "astronaut") -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def relative_error(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def user(text: str, n_images: int = 0) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


CONVERSATIONS = {
    "no image": ([user("Write one sentence about the sea.")], 0),
    "one image": ([user("What is in this picture?", 1)], 1),
    "two images": ([user("Compare these two images.", 2)], 2),
    "system prompt": ([{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                       user("What is in this picture?", 1)], 1),
    "two turns": ([user("What is in this picture?", 1),
                   {"role": "assistant", "content": [{"type": "text", "text": "A person in a suit."}]},
                   user("What colour is it?")], 1),
}
IMAGES = [photo("astronaut"), photo("coffee")]


@pytest.fixture(scope="module", params=["mha", "gqa"])
def model_dir(request, model_factory):
    return model_factory(request.param)


@pytest.fixture(scope="module")
def model(model_dir):
    with smolvision.load(model_dir, precision="fp32") as m:
        yield m


def reference_inputs(model_dir, messages, images, **kwargs):
    _, processor = reference(model_dir)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, images=[images] if images else None, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_input_ids_and_pixels_match_the_processor(model, model_dir, case):
    messages, n_images = CONVERSATIONS[case]
    ref = reference_inputs(model_dir, messages, IMAGES[:n_images])
    ours = model.build_inputs(messages, IMAGES[:n_images])
    assert ours.input_ids == ref["input_ids"][0].tolist()
    if n_images:
        # The processor pads images to the same tile count; drop its all-padding tiles.
        ref_pixels = ref["pixel_values"][0].numpy()
        ref_pixels = ref_pixels[ref["pixel_attention_mask"][0].flatten(1).any(1).numpy()]
        assert ours.pixel_values.shape == ref_pixels.shape
        assert np.abs(ours.pixel_values - ref_pixels).max() < 1e-5
    else:
        assert ours.pixel_values is None


def test_input_ids_without_splitting_and_with_a_smaller_edge(model, model_dir):
    messages, _ = CONVERSATIONS["one image"]
    for options in ({"do_image_splitting": False}, {"longest_edge": model.config.vision.image_size * 2}):
        ref_kwargs = dict(options)
        if "longest_edge" in ref_kwargs:
            ref_kwargs = {"size": {"longest_edge": ref_kwargs.pop("longest_edge")}}
        ref = reference_inputs(model_dir, messages, IMAGES[:1], **ref_kwargs)
        assert model.build_inputs(messages, IMAGES[:1], **options).input_ids == ref["input_ids"][0].tolist()


def test_chat_template_matches_the_processor(model, model_dir):
    _, processor = reference(model_dir)
    for messages, _ in CONVERSATIONS.values():
        for gen in (True, False):
            assert model.apply_chat_template(messages, add_generation_prompt=gen) == \
                processor.apply_chat_template(messages, add_generation_prompt=gen)


def test_encode_image_matches_get_image_features(model, model_dir):
    ref_model, _ = reference(model_dir)
    ref = reference_inputs(model_dir, CONVERSATIONS["one image"][0], IMAGES[:1])
    with torch.no_grad():
        features = ref_model.model.get_image_features(pixel_values=ref["pixel_values"])
    features = getattr(features, "pooler_output", features)
    features = torch.cat(list(features)) if isinstance(features, (tuple, list)) else features
    expected = features.reshape(-1, model.config.text.hidden_size).numpy()
    ours = model.encode_image(IMAGES[0])
    assert ours.shape == expected.shape and ours.shape[0] > model.config.image_seq_len  # a split, multi-tile image
    assert relative_error(ours, expected) < TOLERANCE


def test_logits_with_images_match_transformers(model, model_dir):
    ref_model, _ = reference(model_dir)
    messages, n_images = CONVERSATIONS["two images"]
    ref = reference_inputs(model_dir, messages, IMAGES[:n_images])
    with torch.no_grad():
        expected = ref_model(**ref).logits[0, -1].numpy()
    ours = model.logits(ref["input_ids"][0].tolist(), images=IMAGES[:2])
    assert relative_error(ours, expected) < TOLERANCE


@pytest.mark.parametrize("case", ["no image", "one image", "system prompt"])
def test_greedy_text_matches_transformers(model, model_dir, case):
    messages, n_images = CONVERSATIONS[case]
    ref_model, processor = reference(model_dir)
    ref = reference_inputs(model_dir, messages, IMAGES[:n_images])
    with torch.no_grad():
        out = ref_model.generate(**ref, do_sample=False, max_new_tokens=24,
                                 eos_token_id=list(model.eos_token_ids))
    ref_ids = out[0, ref["input_ids"].shape[1]:].tolist()
    result = model.generate(messages=messages, images=IMAGES[:n_images], max_tokens=24)
    assert result.token_ids == ref_ids
    assert result.text == processor.decode(ref_ids, skip_special_tokens=True)
    assert result.prompt_tokens == ref["input_ids"].shape[1]
    assert result.finish_reason == ("stop" if ref_ids[-1] in model.eos_token_ids else "length")


def test_prompt_and_images_is_one_templated_user_turn(model):
    messages, _ = CONVERSATIONS["one image"]
    by_messages = model.generate(messages=messages, images=IMAGES[:1], max_tokens=8)
    by_prompt = model.generate("What is in this picture?", images=IMAGES[:1], max_tokens=8)
    assert by_prompt.token_ids == by_messages.token_ids and by_prompt.n_tiles == by_messages.n_tiles > 1


def test_raw_prompt_is_fed_verbatim(model):
    text = model.apply_chat_template(CONVERSATIONS["one image"][0])
    templated = model.generate(messages=CONVERSATIONS["one image"][0], images=IMAGES[:1], max_tokens=8)
    assert model.generate(text, images=IMAGES[:1], raw=True, max_tokens=8).token_ids == templated.token_ids


def test_stream_yields_the_generate_text_piece_by_piece(model):
    result = model.generate("Tell me a story.", max_tokens=20)
    pieces = list(model.stream("Tell me a story.", max_tokens=20))
    assert len(pieces) > 1 and "".join(pieces) == result.text


def test_on_token_sees_the_text_and_can_stop(model):
    seen = []
    result = model.generate("Tell me a story.", max_tokens=20, on_token=lambda piece: seen.append(piece) or len(seen) == 3)
    assert result.finish_reason == "cancelled" and "".join(seen) == result.text and len(seen) == 3


def test_stop_string_cuts_the_text_and_ends_generation(model):
    full = model.generate("Tell me a story.", max_tokens=30)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    cut = full.text[:full.text.find(stop)]
    pieces = []
    result = model.generate("Tell me a story.", max_tokens=30, stop=[stop], on_token=pieces.append)
    assert result.text == cut and "".join(pieces) == cut
    assert result.finish_reason == "stop" and len(result.token_ids) < len(full.token_ids)


def test_timings_are_reported(model):
    model.clear_cache()  # else the image cache serves the image an earlier test encoded (image_encode_s 0)
    result = model.generate("What is this?", images=IMAGES[:1], max_tokens=4)
    t = result.timings
    assert t.image_encode_s > 0 and t.prefill_s > 0 and t.prompt_tokens == result.prompt_tokens
    assert t.generated_tokens == len(result.token_ids) == 4
    # The first id comes out of the prefill; the other three are decoded.
    assert t.decode_s > 0 and t.decode_tokens_per_s == pytest.approx(t.generated_tokens / t.decode_s)
    assert t.prefill_tokens_per_s == pytest.approx(t.prompt_tokens / t.prefill_s)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "nothing to answer"),
    (dict(prompt="hi", messages=[user("hi")]), "whole conversation"),
    (dict(prompt="<image> and <image>", images=IMAGES[:1], raw=True), "markers"),
    (dict(messages=[user("hi", 1)]), "markers"),
    (dict(prompt="hi", stop=[3]), "stop"),
    (dict(prompt="hi", max_tokens=-1), "max_tokens"),
])
def test_bad_requests_raise_input_error(model, kwargs, match):
    with pytest.raises(smolvision.InputError, match=match):
        model.generate(**kwargs)


def test_unreadable_image_raises_image_error(model, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(smolvision.ImageError, match="broken.png"):
        model.generate("What is this?", images=[str(bad)])


@pytest.mark.slow
@pytest.mark.parametrize("question", ["What is the capital of France?", "Write a haiku about the sea.",
                                      "Explain photosynthesis in one sentence."])
def test_real_weights_chat_text_matches_transformers(real_dir, question):
    """SmolLM2-135M-Instruct's real weights: 64 greedy tokens of real text, identical to transformers."""
    ref_model, processor = reference(real_dir)
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    ref = reference_inputs(real_dir, messages, [])
    with smolvision.load(real_dir, precision="fp32") as model:
        result = model.generate(messages=messages, max_tokens=64)
        with torch.no_grad():
            out = ref_model.generate(**ref, do_sample=False, max_new_tokens=64,
                                     eos_token_id=list(model.eos_token_ids))
    ref_ids = out[0, ref["input_ids"].shape[1]:].tolist()
    assert result.token_ids == ref_ids
    assert result.text == processor.decode(ref_ids, skip_special_tokens=True)
    words = result.text.split()
    assert len(words) >= 5 and sum(c.isalpha() or c.isspace() for c in result.text) > 0.8 * len(result.text)


def test_on_progress_follows_the_tiles_and_changes_nothing(model):
    model.clear_cache()  # the tiles are encoded (and reported) only when the image cache does not hold them
    seen = []
    result = model.generate("What is this?", images=IMAGES[:1], max_tokens=6,
                            on_progress=lambda done, total: seen.append((done, total)))
    plain = model.generate("What is this?", images=IMAGES[:1], max_tokens=6)
    assert seen[0] == (0, result.n_tiles) and seen[-1] == (result.n_tiles, result.n_tiles)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 2
    assert result.token_ids == plain.token_ids
