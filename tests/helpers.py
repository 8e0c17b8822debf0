"""Helpers the test modules share (fixtures that use them are in conftest.py).

Subprocesses import the same smolvision this test process imported (installed or in-tree): its
parent directory goes first on PYTHONPATH and they run from a temporary directory, so a source
checkout in the working directory cannot shadow an installed package.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import smolvision

PACKAGE_PARENT = str(Path(smolvision.__file__).resolve().parent.parent)


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def run_cli(*args, cwd, timeout: float = 120, input: str | None = None, **env: str):
    """`python -m smolvision ARGS` as a user would run it; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "smolvision", *map(str, args)], cwd=cwd, env=cli_env(**env),
                          input=input, capture_output=True, text=True, timeout=timeout)


def write_image(path: Path, size=(150, 110), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def assert_usage_error(rc: int, err: str, needle: str) -> None:
    assert rc == 2
    assert "usage:" in err and "error:" in err and needle in err, err
    assert "Traceback" not in err


def assert_one_line_error(rc: int, err: str, needle: str) -> None:
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("smolvision: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def fake_hf_cache(cache: Path, repo_id: str, files=("config.json", "model.safetensors", "tokenizer.json"),
                  source: Path | None = None) -> Path:
    """Lays out cache/models--ORG--NAME/{refs/main, snapshots/<hash>/files}; returns the snapshot dir."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    if source is not None:
        for item in source.iterdir():
            shutil.copy(item, snapshot / item.name)
    else:
        for name in files:
            (snapshot / name).write_text("{}")
    return snapshot


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- images and processor configs (test_preprocess.py, test_prompts.py) ----

# preprocessor_config.json of SmolVLM-Instruct and SmolVLM-256M-Instruct, with a smaller longest_edge
# (1536 and 2048 upstream) to keep the tests fast; test_preprocess.py runs the real 1536.
INSTRUCT_CONFIG = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Idefics3ImageProcessor", "max_image_size": {"longest_edge": 384},
    "processor_class": "Idefics3Processor", "resample": 1, "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 768},
}

# SmolVLM's chat template (chat_template.json of HuggingFaceTB/SmolVLM-Instruct).
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def smooth_rgb(width: int, height: int) -> np.ndarray:
    """A gradient with noise: structure for the resampler to get right, and no flat areas that hide errors."""
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


# ---- stand-ins for the CLI tests: a model that keeps the generate contract ----

@dataclass
class FakeTimings:
    image_encode_s: float = 0.5
    prefill_s: float = 0.25
    decode_s: float = 1.0
    prefill_tokens_per_s: float = 40.0
    decode_tokens_per_s: float = 3.0


@dataclass
class FakeResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    n_tiles: int
    timings: FakeTimings = field(default_factory=FakeTimings)


class FakeModel:
    """Answers '<last user text> with N images.' in three pieces and records every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.closed = False

    def generate(self, prompt=None, images=(), messages=None, on_token=None, on_progress=None, **kwargs):
        self.calls.append(dict(prompt=prompt, images=list(images), messages=messages, **kwargs))
        if on_progress is not None:  # the CLI shows tile progress; the fake has two tiles per image
            on_progress(2 * len(images), 2 * len(images))
        for path in images:
            if str(path).endswith(".bad"):
                raise smolvision.ImageError(f"cannot decode image {path}")
        if messages is not None:
            prompt = messages[-1]["content"][-1]["text"]
        pieces = [" " + prompt, f" with {len(images)}", " images."]
        for piece in pieces:
            if on_token is not None and on_token(piece):
                break
        return FakeResult("".join(pieces), [1, 2, 3], "stop", 10 + len(images), 2 * len(images))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


# ---- damaged model directories (test_load_errors.py, test_hostile.py) ----

def read_safetensors(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict, data: bytes, header_len: int | None = None):
    hb = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if header_len is None else header_len) + hb + data)


def edit_config(model_dir: Path, edit):
    cfg = json.loads((model_dir / "config.json").read_text())
    edit(cfg)
    (model_dir / "config.json").write_text(json.dumps(cfg))


def load_error(model_dir) -> str:
    with pytest.raises(smolvision.ModelError) as info:
        smolvision.load(model_dir)
    return str(info.value)


def write_clip(path, seconds: float = 5, fps: int = 10, width: int = 102, height: int = 58) -> None:
    """A clip (mpeg4 in the file's container) whose frames differ visibly: a moving bright square and a
    colour that changes every frame."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[:height, :width]
        for n in range(int(seconds * fps)):
            rgb = np.stack([(x * 2 + n * 5) % 256, (y * 3 + n * 11) % 256, np.full_like(x, (n * 23) % 256)], -1)
            rgb[(abs(x - 5 - n * 2) < 6) & (abs(y - height // 2) < 6)] = 255
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
