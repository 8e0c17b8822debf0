"""The real-weights fixture (realmodel.py) is a working SmolVLM checkpoint, checked with transformers only.

It must load as Idefics3, chat in English through its own chat template, and
its text logits must be exactly those of SmolLM2-135M-Instruct loaded from the
GGUF (with the weights rounded to BF16 as the fixture stores them), which
proves the copy into the Idefics3 layout, q/k permutation included.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor, Idefics3ForConditionalGeneration

import realmodel  # noqa: E402

# Loading the 135M model twice and generating 3 x 48 tokens takes minutes on a small CPU box.
pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain photosynthesis in one sentence."]


@pytest.fixture(scope="module")
def hf_model(real_dir):
    return Idefics3ForConditionalGeneration.from_pretrained(real_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(real_dir):
    return AutoProcessor.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def answers(hf_model, processor):
    """Greedy 48-token answers to PROMPTS, asked through the fixture's chat template."""
    out = {}
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = processor.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = hf_model.generate(input_ids=ids, max_new_tokens=48, do_sample=False)
        out[prompt] = processor.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return out


def test_fixture_layout(real_dir, hf_model, processor):
    config = json.loads((real_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["text_config"]["tie_word_embeddings"]
    assert config["text_config"]["vocab_size"] == 49155
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(realmodel.ADDED_TOKENS) == [49152, 49153, 49154]
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<image>") < config["text_config"]["vocab_size"]
    gen = json.loads((real_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), 49154] == [2, 49154]
    assert (gen["bos_token_id"], gen["pad_token_id"]) == (1, 2)

    header_len = int.from_bytes((real_dir / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((real_dir / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.text_model.embed_tokens.weight.data_ptr()


def test_chat_template_accepts_content_lists_and_strings(processor):
    as_list = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    as_str = [{"role": "user", "content": "Hi"}]
    text = processor.apply_chat_template(as_list, add_generation_prompt=True)
    assert text == processor.apply_chat_template(as_str, add_generation_prompt=True)
    assert text == ("<|im_start|>system\n" + realmodel.DEFAULT_SYSTEM + "<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}] + as_str
    assert processor.apply_chat_template(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_generates_english(answers):
    for prompt, answer in answers.items():
        print(f"{prompt!r} -> {answer!r}")
        letters = sum(c.isascii() and (c.isalpha() or c == " ") for c in answer)
        assert len(answer.split()) >= 3, (prompt, answer)
        assert letters >= 0.85 * len(answer), (prompt, answer)
    assert "Paris" in answers[PROMPTS[0]]
    assert any(w in answers[PROMPTS[2]].lower() for w in ("light", "sun")), answers[PROMPTS[2]]


def test_text_logits_match_gguf(hf_model, processor):
    reference = realmodel.smollm2_text_model()
    messages = [{"role": "user", "content": "Name three primary colors and one use of each."}]
    ids = processor.tokenizer(processor.apply_chat_template(messages, add_generation_prompt=True),
                              return_tensors="pt").input_ids
    assert int(ids.max()) < 49152  # text only: the GGUF model has no rows for SmolVLM's added tokens
    with torch.no_grad():
        ours = hf_model(input_ids=ids).logits[0, :, :49152]
        unrounded = reference(input_ids=ids).logits[0]
        for p in reference.parameters():  # the fixture stores BF16: round the reference the same way
            p.copy_(p.to(torch.bfloat16).float())
        rounded = reference(input_ids=ids).logits[0]
    scale = rounded.abs().max()
    assert (ours - rounded).abs().max() <= 1e-4 * scale
    # BF16 rounding of the dequantized weights moves logits only slightly and keeps the top token.
    assert (ours - unrounded).abs().max() <= 0.02 * scale
    assert torch.equal(ours.argmax(-1), unrounded.argmax(-1))
