"""The vision encoder against transformers' Idefics3Model.get_image_features, run in the same test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import smolvision

TOLERANCE = 1e-3  # max abs difference / max abs reference value

_references: dict = {}


def reference_model(model_dir):
    """transformers' model in float32, loaded once per directory."""
    from transformers import Idefics3ForConditionalGeneration

    key = str(model_dir)
    if key not in _references:
        _references[key] = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _references[key]


def reference_features(model_dir, pixel_values: np.ndarray) -> np.ndarray:
    """get_image_features of one sample holding all tiles: [n_tiles * image_seq_len, text_hidden]."""
    model = reference_model(model_dir)
    with torch.no_grad():
        result = model.model.get_image_features(torch.from_numpy(pixel_values)[None])
    (features,) = result.pooler_output  # one entry per sample in the batch
    return features.numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def random_tiles(model: smolvision.Model, n_tiles: int, seed: int) -> np.ndarray:
    """Normalized-looking pixel values: uniform in [-1, 1] like (x/255 - 0.5) / 0.5."""
    size = model.config.vision.image_size
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n_tiles, 3, size, size)).astype(np.float32)


def check_parity(model_dir, pixel_values: np.ndarray, threads=None) -> float:
    with smolvision.load(model_dir, threads=threads, precision="fp32") as model:
        ours = model.encode_pixel_values(pixel_values)
        assert ours.dtype == np.float32
        assert ours.shape == (len(pixel_values) * model.config.image_seq_len, model.config.text.hidden_size)
    error = relative_error(ours, reference_features(model_dir, pixel_values))
    print(f"{model_dir.name}: {len(pixel_values)} tiles, max relative error {error:.2e}")
    assert error < TOLERANCE
    return error


@pytest.mark.parametrize("n_tiles", [1, 5])
def test_parity_random_tiles(any_model_dir, n_tiles):
    with smolvision.load(any_model_dir, precision="fp32") as model:
        pixels = random_tiles(model, n_tiles, seed=n_tiles)
    check_parity(any_model_dir, pixels)


def test_parity_several_passes(any_model_dir):
    """More tiles than one pass of the encoder holds (vision.c PASS_MAX_TILES, 2): five tiles run as passes
    of 2, 2 and 1, reusing the scratch."""
    with smolvision.load(any_model_dir, precision="fp32") as model:
        pixels = random_tiles(model, 5, seed=20)
    check_parity(any_model_dir, pixels)


def test_parity_nested_naming(model_factory):
    model_dir = model_factory("mha", naming="nested")
    with smolvision.load(model_dir, precision="fp32") as model:
        pixels = random_tiles(model, 2, seed=7)
    check_parity(model_dir, pixels)


def test_parity_single_thread_and_odd_thread_count(mha_dir):
    """The pool's split of rows and attention items must not change the result."""
    with smolvision.load(mha_dir, precision="fp32") as model:
        pixels = random_tiles(model, 3, seed=3)
    check_parity(mha_dir, pixels, threads=1)
    check_parity(mha_dir, pixels, threads=3)


def test_tiles_are_independent(gqa_dir):
    """A tile's features do not depend on the other tiles of the batch."""
    with smolvision.load(gqa_dir, precision="fp32") as model:
        pixels = random_tiles(model, 4, seed=11)
        batch = model.encode_pixel_values(pixels)
        alone = model.encode_pixel_values(pixels[2:3])
        seq = model.config.image_seq_len
    # Equal up to fp32 summation order (BLAS may block a batch differently); a leak between tiles is O(1).
    assert relative_error(batch[2 * seq:3 * seq], alone) < 1e-5


def synthetic_image(height: int, width: int):
    """A deterministic RGB image with gradients and noise, so every tile differs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    rgb = np.clip(rgb + rng.integers(-20, 21, size=rgb.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def test_parity_processed_split_image(any_model_dir):
    """Real preprocessed pixel values of a split image (all tiles plus the global one)."""
    from transformers import Idefics3ImageProcessor

    processor = Idefics3ImageProcessor.from_pretrained(any_model_dir)
    batch = processor(images=[[synthetic_image(300, 410)]], do_image_splitting=True, return_tensors="np")
    pixels = np.asarray(batch["pixel_values"][0], dtype=np.float32)
    assert len(pixels) > 1 and batch["pixel_attention_mask"].all()  # full tiles, no padding
    check_parity(any_model_dir, pixels)


@pytest.mark.parametrize("side", [6, 8, 26, 27, 32])
def test_reference_position_ids_are_raster_order(side):
    """Our encoder gives patch i position embedding i; check the reference does for full tiles.

    6 and 8 are the fixture grids; 26, 27 and 32 are SmolVLM's (364/14, 378/14 or 384/14, 512/16)."""
    from transformers import Idefics3VisionConfig
    from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionEmbeddings

    embeddings = Idefics3VisionEmbeddings(Idefics3VisionConfig(hidden_size=4, patch_size=2, image_size=2 * side))
    with torch.no_grad():
        embeddings.patch_embedding.weight.zero_()
        embeddings.patch_embedding.bias.zero_()
        embeddings.position_embedding.weight.copy_(torch.arange(side * side, dtype=torch.float32)[:, None])
        out = embeddings(torch.zeros(1, 3, 2 * side, 2 * side), torch.ones(1, side, side, dtype=torch.bool))
    np.testing.assert_array_equal(out[0, :, 0].numpy(), np.arange(side * side, dtype=np.float32))


def test_bad_arguments(mha_dir):
    with smolvision.load(mha_dir, precision="fp32") as model:
        size = model.config.vision.image_size
        good = random_tiles(model, 1, seed=0)
        with pytest.raises(smolvision.InputError, match="float32"):
            model.encode_pixel_values(good.astype(np.float64))
        with pytest.raises(smolvision.InputError, match="shape"):
            model.encode_pixel_values(good[0])
        with pytest.raises(smolvision.InputError, match="shape"):
            model.encode_pixel_values(np.zeros((1, 3, size, size + 1), np.float32))
        with pytest.raises(smolvision.InputError, match="shape"):
            model.encode_pixel_values(np.zeros((1, 1, size, size), np.float32))
        with pytest.raises(smolvision.InputError, match="shape"):
            model.encode_pixel_values(np.zeros((0, 3, size, size), np.float32))
        with pytest.raises(smolvision.InputError, match="numpy"):
            model.encode_pixel_values(good.tolist())
        with pytest.raises(smolvision.InputError, match="all zeros"):
            model.encode_pixel_values(np.concatenate([good, np.zeros_like(good)]))
        # A non-contiguous view is copied, not misread.
        strided = np.concatenate([good, good])[::2]
        assert relative_error(model.encode_pixel_values(strided), model.encode_pixel_values(good)) < 1e-6


def test_c_api_rejects_bad_arguments(mha_dir):
    from smolvision._native import ffi, lib

    with smolvision.load(mha_dir, precision="fp32") as model:
        size = model.config.vision.image_size
        pixels = ffi.new("float[]", 3 * size * size)
        out = ffi.new("float[]", model.config.image_seq_len * model.config.text.hidden_size)
        handle = model._ptr
        assert lib.sv_encode_images(ffi.NULL, pixels, 1, out) == lib.SV_ERR_ARG
        assert lib.sv_encode_images(handle, ffi.NULL, 1, out) == lib.SV_ERR_ARG
        assert lib.sv_encode_images(handle, pixels, 1, ffi.NULL) == lib.SV_ERR_ARG
        assert lib.sv_encode_images(handle, pixels, 0, out) == lib.SV_ERR_ARG
        assert lib.sv_encode_images(handle, pixels, -3, out) == lib.SV_ERR_ARG
        assert lib.sv_encode_images(handle, pixels, 1 << 30, out) == lib.SV_ERR_ARG
        assert b"n_tiles" in ffi.string(lib.sv_last_error())
