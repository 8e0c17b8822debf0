"""Loading: every fixture shape loads and its parsed config matches transformers'."""
from __future__ import annotations

import os

import pytest

import smolvision


def reference_config(model_dir):
    from transformers import Idefics3Config

    return Idefics3Config.from_pretrained(model_dir)


@pytest.mark.parametrize("variant,naming,shards", [
    ("mha", "hf", False), ("gqa", "hf", False), ("mha", "nested", False), ("gqa", "nested", True),
])
def test_config_matches_transformers(model_factory, variant, naming, shards):
    model_dir = model_factory(variant, naming=naming, shards=shards)
    ref = reference_config(model_dir)
    with smolvision.load(model_dir) as model:
        c = model.config
        v, t = ref.vision_config, ref.text_config
        assert (c.vision.hidden_size, c.vision.intermediate_size, c.vision.num_hidden_layers,
                c.vision.num_attention_heads, c.vision.patch_size, c.vision.image_size) == (
            v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size,
            v.image_size)
        assert c.vision.layer_norm_eps == pytest.approx(v.layer_norm_eps)
        assert (c.text.hidden_size, c.text.intermediate_size, c.text.num_hidden_layers, c.text.num_attention_heads,
                c.text.num_key_value_heads, c.text.head_dim, c.text.vocab_size, c.text.max_position_embeddings) == (
            t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
            t.head_dim, t.vocab_size, t.max_position_embeddings)
        assert c.text.rms_norm_eps == pytest.approx(t.rms_norm_eps)
        assert c.text.rope_theta == pytest.approx(t.rope_parameters["rope_theta"])
        assert c.text.tie_word_embeddings == ref.tie_word_embeddings
        assert c.scale_factor == ref.scale_factor
        assert c.image_token_id == ref.image_token_id
        side = v.image_size // v.patch_size
        assert c.image_seq_len == side * side // ref.scale_factor ** 2


def test_model_is_a_context_manager_and_closes(mha_dir):
    with smolvision.Model(mha_dir) as model:
        assert not model.closed
        assert "3-layer text" in repr(model)
    assert model.closed
    model.close()  # idempotent
    with pytest.raises(smolvision.Error, match="closed"):
        model._ptr


def test_two_models_live_side_by_side(mha_dir, gqa_dir):
    a, b = smolvision.load(mha_dir, threads=1), smolvision.load(gqa_dir, threads=2)
    assert a.config.text.num_key_value_heads == 4 and b.config.text.num_key_value_heads == 2
    a.close()
    assert b.config.scale_factor == 4
    b.close()


def test_build_info_names_the_blas():
    assert smolvision.build_info().startswith("blas=")


@pytest.mark.skipif(not os.environ.get("SMOLVISION_EXPECT_SANITIZE"),
                    reason="only meaningful in the sanitizer run (.ci/run sets SMOLVISION_EXPECT_SANITIZE=1)")
def test_sanitizer_run_really_uses_the_sanitized_library():
    assert "sanitize=on" in smolvision.build_info()
