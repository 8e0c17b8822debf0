"""Hostile model directories and inputs fail fast with smolvision errors, bounded memory, no hangs.

Extends test_load_errors.py (which covers the plain malformed-file cases) with the adversarial ones:
resource exhaustion through small files, integer edge cases, link loops, FIFOs and device files,
absurd configs, prompts beyond the context window.  Cases that could hang or balloon memory if the
guard regressed run in a child process with a timeout and report their peak RSS.
Images of 100 megapixels are covered in test_preprocess.py (test_100_megapixel_png_is_refused_fast).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import smolvision
from helpers import edit_config, load_error, read_safetensors, write_safetensors

# Children import the same smolvision build as this process (installed in CI, in-tree in development).
PACKAGE_HOME = str(Path(smolvision.__file__).resolve().parent.parent)
TENSOR = "model.text_model.norm.weight"  # any tensor of the MHA fixture


def run_isolated(body: str, timeout: float = 60) -> dict:
    """Runs `body` (which sets `result`, a dict) in a fresh interpreter; returns result plus the child's
    peak RSS in MB ('peak_mb').  A hang fails the test (after `timeout`) instead of the suite."""
    code = "import json, resource, sys\nsys.path.insert(0, %r)\nimport smolvision\n" \
           "result = {}\n%s\n" \
           "result['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n" \
           "print(json.dumps(result))\n" % (PACKAGE_HOME, textwrap.dedent(body))
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_HOME, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {timeout} s")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def isolated_load_error(model_dir: Path, timeout: float = 60) -> dict:
    """Loads model_dir in a child process; returns {'error': class name, 'message', 'peak_mb'}."""
    return run_isolated(f"""
        try:
            smolvision.load({str(model_dir)!r}).close()
            result['error'] = None
        except smolvision.Error as exc:
            result['error'], result['message'] = type(exc).__name__, str(exc)
        """, timeout)


def baseline_peak_mb() -> float:
    return run_isolated("pass")["peak_mb"]


# ---- resource exhaustion through small files ----

def test_header_of_millions_of_tiny_values_is_refused_with_bounded_memory(broken):
    # 99 MB of "0," is under the format's 100 MB header limit, but as a JSON tree it took 6.5 GB.
    hdr = b"[" + b"0," * ((99 << 20) // 2) + b"0]"
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr)
    out = isolated_load_error(broken)
    assert out["error"] == "ModelError" and "more than" in out["message"] and "values" in out["message"]
    assert out["peak_mb"] < baseline_peak_mb() + 800, out


def test_more_tensors_than_the_limit_is_refused(broken):
    entries = ",".join(f'"t{i}":{{}}' for i in range(1_000_001))
    hdr = ("{" + entries + "}").encode()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr)
    assert "more than 1000000 tensors" in load_error(broken)


def test_json_nesting_is_limited(broken):
    (broken / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nesting deeper than" in load_error(broken)


# ---- integer edge cases in shapes and offsets ----

@pytest.mark.parametrize("change, words", [
    ({"shape": [2**62, 3]}, "byte size overflows"),  # numel fits, numel * 2 bytes (BF16) does not
    ({"shape": [2**32, 2**32]}, "shape product overflows"),
    ({"shape": [-4]}, "bad shape"),
    ({"shape": [4.0]}, "bad shape"),
    ({"shape": [1] * 9}, "dimensions"),
    ({"data_offsets": [0, 2**64]}, "bad data_offsets"),
    ({"data_offsets": [-1, 3]}, "bad data_offsets"),
    ({"data_offsets": [8, 4]}, "bad data_offsets"),
    ({"data_offsets": [2**63 - 9, 2**63 - 1]}, "past the end"),
    ({"data_offsets": [0]}, "bad data_offsets"),
])
def test_integer_edge_cases_in_the_header(broken, change, words):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    header[TENSOR].update(change)
    write_safetensors(path, header, data)
    msg = load_error(broken)
    assert words in msg and (TENSOR in msg or "overlap" in msg)


def test_tensor_nested_inside_another_is_an_overlap(broken):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    big = "model.text_model.embed_tokens.weight"
    start = header[big]["data_offsets"][0] + 16
    size = header[TENSOR]["data_offsets"][1] - header[TENSOR]["data_offsets"][0]
    header[TENSOR]["data_offsets"] = [start, start + size]
    write_safetensors(path, header, data)
    assert "overlap" in load_error(broken)


# ---- link loops, FIFOs, device files ----

@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_file_linking_to_itself_fails_without_hanging(broken, name):
    (broken / name).unlink()
    os.symlink(name, broken / name)
    out = isolated_load_error(broken)  # in a child: a loop that hung would fail the test, not the suite
    assert out["error"] == "ModelError" and name in out["message"] and "symbolic links" in out["message"], out


def test_shard_linking_to_itself_fails_fast(tmp_path, model_factory):
    model = tmp_path / "model"
    shutil.copytree(model_factory("gqa", naming="nested", shards=True), model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (model / shard).unlink()
    os.symlink(shard, model / shard)
    assert "symbolic links" in load_error(model)


def test_model_directory_linking_to_itself(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(smolvision.ModelError):
        smolvision.load(tmp_path / "loop")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_do_not_hang_loading(broken, name, kind):
    (broken / name).unlink()
    if kind == "fifo":
        os.mkfifo(broken / name)  # opening it for reading would wait for a writer forever
    else:
        os.symlink("/dev/zero", broken / name)  # endless
    out = isolated_load_error(broken, timeout=30)
    assert out["error"] == "ModelError" and name in out["message"] and "not a regular file" in out["message"]


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json", "chat_template.jinja",
                                  "preprocessor_config.json", "processor_config.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "loop", "deep", "not_utf8"])
def test_hostile_side_files_raise_model_error(broken, name, kind):
    # The files Python reads (EOS ids, special tokens, chat template, image processor) get the same guard.
    path = broken / name
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "loop":
        os.symlink(name, path)
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path.write_bytes(b'{"eos_token_id": "\xff\xfe"}')
    if name == "chat_template.jinja" and kind == "deep":
        pytest.skip("a template is text, not JSON")
    if kind in ("fifo", "dev_zero"):  # could hang if the guard regressed: in a child process
        out = run_isolated(f"""
            import numpy as np
            model = smolvision.load({str(broken)!r})
            try:
                model.generate("hi", images=[np.zeros((40, 40, 3), dtype=np.uint8)], max_tokens=1)
                result['error'] = None
            except smolvision.Error as exc:
                result['error'], result['message'] = type(exc).__name__, str(exc)
            """, timeout=60)
        assert out["error"] == "ModelError" and name in out["message"], out
    else:
        with smolvision.load(broken) as model:
            with pytest.raises(smolvision.ModelError, match=name.replace(".", r"\.")):
                model.generate("hi", images=[np.zeros((40, 40, 3), dtype=np.uint8)], max_tokens=1)


# ---- absurd configs ----

@pytest.mark.parametrize("section, key, value", [
    ("text_config", "vocab_size", 10**9),
    ("text_config", "hidden_size", 2**31 - 1),
    ("vision_config", "num_hidden_layers", 10**9),
    ("text_config", "max_position_embeddings", 2**40),
    ("vision_config", "image_size", 2**31 - 1),
])
def test_absurd_config_sizes_are_refused(broken, section, key, value):
    edit_config(broken, lambda c: c[section].update({key: value}))
    msg = load_error(broken)
    assert key in msg and "range" in msg


def test_largest_accepted_config_fails_on_the_weights_without_allocating(broken):
    # Every size at its limit passes the config check; the weights then disagree, and nothing sized
    # by the config may have been allocated on the way.
    def biggest(c):
        c["text_config"].update(num_hidden_layers=1024, hidden_size=65536, intermediate_size=1 << 20,
                                vocab_size=1 << 22, max_position_embeddings=1 << 22, num_attention_heads=1024,
                                num_key_value_heads=1024, head_dim=64)
        c["vision_config"].update(num_hidden_layers=1024, hidden_size=65536, intermediate_size=1 << 20,
                                  num_attention_heads=1024, image_size=8192, patch_size=1)
        c["scale_factor"] = 1
    edit_config(broken, biggest)
    out = isolated_load_error(broken)
    assert out["error"] == "ModelError" and "shape" in out["message"], out
    assert out["peak_mb"] < baseline_peak_mb() + 100, out


def test_absurd_thread_count_is_refused(mha_dir):
    with pytest.raises(smolvision.InputError, match="threads"):
        smolvision.load(mha_dir, threads=10**6)


# ---- tokenizer.json ----

def test_deeply_nested_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(smolvision.TokenizerError, match="nesting deeper than"):
        smolvision.Tokenizer.from_file(path)


def test_huge_tokenizer_json_is_refused_by_size(tmp_path):
    path = tmp_path / "tokenizer.json"
    with open(path, "wb") as f:
        f.truncate(600 << 20)  # sparse: no disk used
    out = run_isolated(f"""
        try:
            smolvision.Tokenizer.from_file({str(path)!r})
        except smolvision.TokenizerError as exc:
            result['message'] = str(exc)
        """)
    assert "more than the" in out.get("message", ""), out
    assert out["peak_mb"] < baseline_peak_mb() + 100, out  # refused by its size, never read in


def test_tokenizer_json_of_millions_of_values_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b'{"model": [' + b"0," * 5_000_000 + b"0]}")
    with pytest.raises(smolvision.TokenizerError, match="values"):
        smolvision.Tokenizer.from_file(path)


# ---- prompts beyond the context window ----

@pytest.fixture(scope="module")
def model(mha_dir):
    with smolvision.load(mha_dir, threads=1) as m:
        yield m


def test_image_count_beyond_the_context_is_refused_before_decoding(model):
    per_image = model._prompts.image_seq_len
    n = model.config.text.max_position_embeddings // per_image + 1
    # Paths that do not exist: decoding any of them would raise ImageError instead.
    with pytest.raises(smolvision.InputError, match="context window"):
        model.generate("hi", images=["/nonexistent.png"] * n, max_tokens=1)


def test_prompt_beyond_the_context_is_refused_before_encoding_images(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "encode_pixel_values", lambda pixels: calls.append(1))
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    text = "word " * model.config.text.max_position_embeddings
    with pytest.raises(smolvision.InputError, match="context window"):
        model.generate(text, images=[image], max_tokens=1)
    assert calls == []


def test_max_tokens_beyond_the_context_is_refused_before_allocating(model):
    tracemalloc.start()  # numpy's buffers are traced: an output array of max_tokens ids would show
    try:
        with pytest.raises(smolvision.InputError, match="context window"):
            model.generate_ids([1, 2, 3], max_tokens=10**8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10**7, peak  # 10**8 int32 ids would be 400 MB
