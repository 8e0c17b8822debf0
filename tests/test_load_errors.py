"""Bad model directories and hostile files raise smolvision errors naming the culprit.

Every case starts from a real fixture written by transformers and breaks one thing.
"""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

import smolvision
from helpers import edit_config, load_error, read_safetensors, write_safetensors


def test_missing_directory(tmp_path):
    assert "not found" in load_error(tmp_path / "nope")


def test_missing_config(broken):
    (broken / "config.json").unlink()
    assert "config.json" in load_error(broken)


def test_config_not_json(broken):
    (broken / "config.json").write_text('{"model_type": "idefics3", ')
    msg = load_error(broken)
    assert "config.json" in msg and "JSON" in msg


def test_unsupported_architecture(broken):
    edit_config(broken, lambda c: (c.update(model_type="llava"), c.update(architectures=["LlavaForCausalLM"])))
    msg = load_error(broken)
    assert "unsupported architecture" in msg and "llava" in msg


def test_unsupported_activation(broken):
    edit_config(broken, lambda c: c["text_config"].update(hidden_act="gelu"))
    assert "hidden_act" in load_error(broken)


def test_absurd_sizes_are_refused_before_allocation(broken):
    edit_config(broken, lambda c: c["text_config"].update(num_hidden_layers=10**9))
    msg = load_error(broken)
    assert "num_hidden_layers" in msg and "range" in msg


def test_wrong_type_in_config(broken):
    edit_config(broken, lambda c: c["vision_config"].update(hidden_size="big"))
    assert "vision_config.hidden_size" in load_error(broken)


def test_inconsistent_heads(broken):
    edit_config(broken, lambda c: c["text_config"].update(num_key_value_heads=3))
    assert "num_key_value_heads" in load_error(broken)


def test_config_disagreeing_with_weights_names_the_tensor(broken):
    edit_config(broken, lambda c: c["text_config"].update(intermediate_size=300))
    msg = load_error(broken)
    assert "mlp.gate_proj.weight" in msg and "shape" in msg


def test_no_weights(broken):
    (broken / "model.safetensors").unlink()
    assert "model.safetensors" in load_error(broken)


def test_truncated_file(broken):
    path = broken / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    msg = load_error(broken)
    assert "past the end" in msg and "truncated" in msg


def test_file_shorter_than_the_length_prefix(broken):
    (broken / "model.safetensors").write_bytes(b"\x01\x02")
    assert "too short" in load_error(broken)


def test_header_length_beyond_file(broken):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    write_safetensors(path, header, data, header_len=len(path.read_bytes()) * 2)
    assert "header length" in load_error(broken)


def test_header_length_absurd(broken):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    write_safetensors(path, header, data, header_len=2**63)
    assert "limit" in load_error(broken)


def test_header_not_json(broken):
    path = broken / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{nope" + b"\0" * 64)
    assert "not valid JSON" in load_error(broken)


def _edit_tensor(broken, edit):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    name = "model.text_model.layers.0.self_attn.q_proj.weight"
    edit(header, name)
    write_safetensors(path, header, data)
    return name


def test_unknown_dtype(broken):
    name = _edit_tensor(broken, lambda h, n: h[n].update(dtype="F8_E9M9"))
    msg = load_error(broken)
    assert name in msg and "unknown dtype" in msg


def test_offsets_past_the_end(broken):
    name = _edit_tensor(broken, lambda h, n: h[n].update(data_offsets=[10**12, 10**12 + h[n]["data_offsets"][1] -
                                                                       h[n]["data_offsets"][0]]))
    msg = load_error(broken)
    assert name in msg and "past the end" in msg


def test_offsets_not_matching_shape(broken):
    name = _edit_tensor(broken, lambda h, n: h[n].update(shape=[h[n]["shape"][0], h[n]["shape"][1] + 1]))
    msg = load_error(broken)
    assert name in msg and "bytes" in msg


def test_shape_product_overflow(broken):
    name = _edit_tensor(broken, lambda h, n: h[n].update(shape=[2**40, 2**40, 2**40]))
    msg = load_error(broken)
    assert name in msg and "overflow" in msg


def test_overlapping_tensors(broken):
    path = broken / "model.safetensors"
    header, data = read_safetensors(path)
    a = "model.text_model.layers.0.self_attn.q_proj.weight"
    b = "model.text_model.layers.0.self_attn.k_proj.weight"  # same shape and dtype in the MHA fixture
    start = header[a]["data_offsets"][0] + 2
    header[b]["data_offsets"] = [start, start + header[b]["data_offsets"][1] - header[b]["data_offsets"][0]]
    write_safetensors(path, header, data)
    assert "overlap" in load_error(broken)


def test_missing_tensor_is_named(broken):
    name = _edit_tensor(broken, lambda h, n: h.pop(n))
    msg = load_error(broken)
    assert name in msg and "missing" in msg


def test_non_float_tensor_is_refused(broken):
    def to_int32(h, n):
        h[n]["dtype"] = "I32"  # same element size as F32? the fixture is BF16, so halve the shape
        h[n]["shape"] = [h[n]["shape"][0] // 2, h[n]["shape"][1]]
    name = _edit_tensor(broken, to_int32)
    msg = load_error(broken)
    assert name in msg and "I32" in msg


@pytest.fixture
def sharded(tmp_path, model_factory):
    out = tmp_path / "model"
    shutil.copytree(model_factory("gqa", naming="nested", shards=True), out)
    return out


def test_index_naming_a_missing_shard(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (sharded / victim).unlink()
    assert victim in load_error(sharded)


def test_index_cannot_escape_the_model_directory(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "does not name a file in the model directory" in load_error(sharded)


def test_index_promising_a_tensor_its_shard_lacks(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.text_model.extra.weight"] = next(iter(index["weight_map"].values()))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model.text_model.extra.weight" in load_error(sharded)


def test_bad_thread_count(mha_dir):
    with pytest.raises(smolvision.InputError):
        smolvision.load(mha_dir, threads=0)


def test_weights_are_not_a_regular_file(broken):
    (broken / "model.safetensors").unlink()
    os.mkdir(broken / "model.safetensors")
    assert "regular file" in load_error(broken)
