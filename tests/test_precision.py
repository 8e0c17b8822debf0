"""precision="bf16": the BF16 x BF16 kernels against numpy, then the issue's contract on the tiny models.

The kernels (driven through the sv_debug_matmul_precision test hook) must
compute exactly the BF16-rounded products, summed in fp32: checked against
float64 sums of the same rounded values with the fp32 accumulation bound.
The models must then be as close to transformers' fp32 run as transformers'
own BF16 run is.  Everything BF16 needs AVX512_BF16 and skips without it;
the fp32 fallback is checked everywhere.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import smolvision
from smolvision._native import ffi, lib

FP32, BF16 = 0, 1
DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
HAVE_BF16 = smolvision.cpu_features()["bf16_matmul"]
needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason="the CPU (or SMOLVISION_ISA) has no AVX512_BF16: "
                                "precision='bf16' runs the fp32 kernels here")

# (rows, cols) of W: odd K (a half pair), K below one vector, panel tails (rows % 32), K not a multiple of 32
SHAPES = [(1, 1), (7, 33), (33, 129), (129, 7), (100, 1152), (45, 64)]
BATCHES = (1, 3, 16, 17, 40)  # 16 is the dot path's last n, 17 the first packed-GEMM n


def to_bf16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(BF16 bits as uint16, the values they hold as float64), rounded to nearest even as torch does."""
    bf = torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)
    return bf.view(torch.int16).numpy().view(np.uint16), bf.double().numpy()


def debug_matmul(precision: int, x: np.ndarray, w: np.ndarray, dtype: str, rows: int, b: np.ndarray | None,
                 threads: int = 2, isa: str = "avx512bf16") -> np.ndarray:
    n, cols = x.shape
    y = np.full((n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul_precision(
        isa.encode(), precision, ffi.from_buffer("float[]", x), n, ffi.from_buffer(w), DTYPES[dtype], rows, cols,
        ffi.from_buffer("float[]", b) if b is not None else ffi.NULL, ffi.from_buffer("float[]", y), threads, 1,
        ffi.NULL)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return y


@needs_bf16
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_kernels_compute_bf16_products_in_fp32(rows, cols, n, bias):
    rng = np.random.default_rng(rows * 1000 + cols + n)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w_bits, w64 = to_bf16(rng.standard_normal((rows, cols)))
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    _, x64 = to_bf16(x)  # what the kernel must multiply: x rounded to BF16
    ref = x64 @ w64.T + (b.astype(np.float64) if bias else 0)
    # fp32 summation of K exact products (+ bias): |error| <= (K + 1) u sum|terms|, u = 2^-24 (unit roundoff).
    magnitude = np.abs(x64) @ np.abs(w64).T + (np.abs(b.astype(np.float64)) if bias else 0)
    bound = (cols + 1) * 2.0**-24 * magnitude + 1e-30
    y = debug_matmul(BF16, x, w_bits, "bf16", rows, b)
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)
    # That bound is far below the effect of rounding x, so it also proves x was rounded (not used in fp32) ...
    exact_x = x.astype(np.float64) @ w64.T + (b.astype(np.float64) if bias else 0)
    if cols >= 33:
        assert np.max(np.abs(y - exact_x) / bound) > 1
    # ... and the fp32 precision on the same ISA still multiplies the unrounded x.
    y32 = debug_matmul(FP32, x, w_bits, "bf16", rows, b)
    assert np.all(np.abs(y32 - exact_x) <= bound * 4)


@needs_bf16
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_bf16_precision_runs_fp32_for_non_bf16_weights(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 129)).astype(np.float32)
    w = rng.standard_normal((70, 129)).astype(np.float32)
    raw = w if dtype == "f32" else w.astype(np.float16).view(np.uint16)
    for n in (1, 40):
        assert np.array_equal(debug_matmul(BF16, x[:n], raw, dtype, 70, None),
                              debug_matmul(FP32, x[:n], raw, dtype, 70, None))


def test_bf16_precision_below_avx512bf16_is_fp32():
    """The fallback: an ISA without BF16 kernels runs the fp32 ones, bit for bit."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 65)).astype(np.float32)
    w_bits, _ = to_bf16(rng.standard_normal((33, 65)))
    for n in (1, 20):
        assert np.array_equal(debug_matmul(BF16, x[:n], w_bits, "bf16", 33, None, isa="portable"),
                              debug_matmul(FP32, x[:n], w_bits, "bf16", 33, None, isa="portable"))


def test_debug_matmul_precision_rejects_unknown_precision():
    x = np.ones((1, 4), np.float32)
    w = np.ones((2, 4), np.float32)
    y = np.zeros((1, 2), np.float32)
    status = lib.sv_debug_matmul_precision(b"portable", 7, ffi.from_buffer("float[]", x), 1, ffi.from_buffer(w), 0,
                                           2, 4, ffi.NULL, ffi.from_buffer("float[]", y), 1, 1, ffi.NULL)
    assert status == lib.SV_ERR_ARG
    assert "precision" in ffi.string(lib.sv_last_error()).decode()


# ---- the load option ----

def test_precision_defaults_to_bf16_and_is_reported(mha_dir):
    """Python defaults to "bf16" (the speed issue's contract); the C API's NULL options keep FP32."""
    with smolvision.load(mha_dir) as model:
        assert model.precision == "bf16"
    with smolvision.load(mha_dir, precision="fp32") as model:
        assert model.precision == "fp32"
    with smolvision.Model(mha_dir, threads=1) as model:
        assert model.precision == "bf16"


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None, 1])
def test_unknown_precision_is_an_input_error(mha_dir, bad):
    with pytest.raises(smolvision.InputError, match="precision"):
        smolvision.load(mha_dir, precision=bad)


def test_load_ex_checks_precision_and_takes_null_options(mha_dir):
    out = ffi.new("sv_model **")
    options = ffi.new("sv_load_options *", {"n_threads": 1, "precision": 2})
    assert lib.sv_model_load_ex(str(mha_dir).encode(), options, out) == lib.SV_ERR_ARG
    assert "precision" in ffi.string(lib.sv_last_error()).decode() and out[0] == ffi.NULL
    assert lib.sv_model_load_ex(str(mha_dir).encode(), ffi.NULL, out) == lib.SV_OK
    assert lib.sv_model_precision(out[0]) == FP32
    lib.sv_model_free(out[0])


def test_cpu_features_names_the_kernels():
    features = smolvision.cpu_features()
    assert features["kernels"] in ("portable", "avx2", "avx512", "avx512bf16", "amx", "neon")
    assert features["bf16_matmul"] == (features["kernels"] in ("avx512bf16", "amx"))


# ---- the contract on the tiny models ----
#
# Error = max |x - fp32 reference| / max |fp32 reference|, the measure of the fp32 parity tests.
# Ours in bf16 mode must be within MARGIN times transformers' own bfloat16 run on the same inputs (or
# FLOOR, about one BF16 ulp, should that run be unusually lucky).  The two round at different places
# (transformers stores every activation and the pixels in BF16; we round only the matmul inputs and
# keep fp32 between them), so the errors are of the same order but not equal, and which is larger
# varies with the inputs; 1.5 leaves room for that while still failing on mistakes that multiply
# the error, such as BF16 accumulation or rounding twice.
MARGIN = 1.5
FLOOR = 4e-3

_references: dict = {}


def reference(model_dir, dtype: torch.dtype):
    from transformers import Idefics3ForConditionalGeneration

    key = (str(model_dir), dtype)
    if key not in _references:
        _references[key] = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).eval()
    return _references[key]


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def token_ids(model_dir, text: str) -> list:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))(text, add_special_tokens=False)["input_ids"]


def random_pixels(model_dir, n_tiles: int, seed: int) -> np.ndarray:
    size = reference(model_dir, torch.float32).config.vision_config.image_size
    return np.random.default_rng(seed).uniform(-1, 1, (n_tiles, 3, size, size)).astype(np.float32)


@torch.no_grad()
def transformers_features(model_dir, pixels: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    out = reference(model_dir, dtype).model.get_image_features(torch.from_numpy(pixels).to(dtype)[None])
    (features,) = out.pooler_output
    return features.float().numpy()


@torch.no_grad()
def transformers_logits(model_dir, ids: list, dtype: torch.dtype, pixels: np.ndarray | None = None) -> np.ndarray:
    pixel_values = None if pixels is None else torch.from_numpy(pixels).to(dtype)[None]
    out = reference(model_dir, dtype)(input_ids=torch.tensor([ids]), pixel_values=pixel_values)
    return out.logits[0, -1].float().numpy()


def image_prompt(model_dir, n_tiles: int) -> list:
    config = reference(model_dir, torch.float32).config
    fake = token_ids(model_dir, "<fake_token_around_image>")
    ids = token_ids(model_dir, "User:")
    for _ in range(n_tiles):
        ids += fake + [config.image_token_id] * (
            (config.vision_config.image_size // config.vision_config.patch_size) ** 2 // config.scale_factor ** 2) + fake
    return ids + token_ids(model_dir, "What is in this image?\nAssistant:")


PROMPTS = {
    "short": "User: Hi!\nAssistant:",  # under 16 tokens: the dot (GEMV) kernels throughout
    "long": "User: Describe the picture of the old lighthouse on the cliff, and say what the weather is like "
            "there today and tomorrow, in detail please.\nAssistant:",  # the packed GEMM for the prompt
    # over 512 tokens: two prefill chunks, the second attending causally to the first's cached keys
    "chunked": "User: " + "The lighthouse stands on the cliff above the grey sea, and its lamp turns all night. " * 30
               + "What does it light?\nAssistant:",
}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_bf16_logits_are_as_close_as_transformers_bf16(mha_dir, prompt):
    """On every CPU: with BF16 kernels the products and the KV cache are BF16, without them the KV cache
    still is (sv_kv_in_bf16), so ours is never as close as fp32, and within transformers' BF16 error."""
    ids = token_ids(mha_dir, PROMPTS[prompt])
    assert (len(ids) <= 16) == (prompt == "short")
    assert (len(ids) > 512) == (prompt == "chunked")
    ref = transformers_logits(mha_dir, ids, torch.float32)
    theirs = relative_error(transformers_logits(mha_dir, ids, torch.bfloat16), ref)
    with smolvision.load(mha_dir, precision="bf16") as model:
        ours = relative_error(model.logits(ids), ref)
    with smolvision.load(mha_dir, precision="fp32") as model:
        fp32 = relative_error(model.logits(ids), ref)
    print(f"{prompt}: ours bf16 {ours:.2e}, transformers bf16 {theirs:.2e}, ours fp32 {fp32:.2e}")
    assert ours <= max(theirs * MARGIN, FLOOR)
    assert ours > fp32  # the BF16 kernels ran: fp32 is much closer


@needs_bf16
def test_bf16_image_features_are_as_close_as_transformers_bf16(mha_dir):
    pixels = random_pixels(mha_dir, 3, seed=5)
    ref = transformers_features(mha_dir, pixels, torch.float32)
    theirs = relative_error(transformers_features(mha_dir, pixels, torch.bfloat16), ref)
    with smolvision.load(mha_dir, precision="bf16") as model:
        ours = relative_error(model.encode_pixel_values(pixels), ref)
    print(f"image features: ours bf16 {ours:.2e}, transformers bf16 {theirs:.2e}")
    assert ours <= max(theirs * MARGIN, FLOOR)


def test_bf16_image_prompt_logits_are_as_close_as_transformers_bf16(mha_dir):
    pixels = random_pixels(mha_dir, 2, seed=6)
    ids = image_prompt(mha_dir, 2)
    ref = transformers_logits(mha_dir, ids, torch.float32, pixels)
    theirs = relative_error(transformers_logits(mha_dir, ids, torch.bfloat16, pixels), ref)
    with smolvision.load(mha_dir, precision="bf16") as model:
        ours = relative_error(model.logits(ids, image_embeds=model.encode_pixel_values(pixels)), ref)
    print(f"image prompt: ours bf16 {ours:.2e}, transformers bf16 {theirs:.2e}")
    assert ours <= max(theirs * MARGIN, FLOOR)


def test_bf16_mode_equals_fp32_mode_for_f32_weights(gqa_dir):
    """gqa_dir's weights are F32: no matmul takes the BF16 kernels, so the results are identical."""
    ids = token_ids(gqa_dir, PROMPTS["long"])
    pixels = random_pixels(gqa_dir, 2, seed=7)
    results = {}
    for precision in ("fp32", "bf16"):
        with smolvision.load(gqa_dir, precision=precision) as model:
            results[precision] = (model.logits(ids), model.encode_pixel_values(pixels))
    assert np.array_equal(results["fp32"][0], results["bf16"][0])
    assert np.array_equal(results["fp32"][1], results["bf16"][1])


def test_bf16_mode_without_avx512bf16_keeps_only_the_cache_in_bf16(mha_dir):
    """With the kernels lowered to AVX-512 (as on a CPU without AVX512_BF16), precision="bf16" on BF16
    weights runs the fp32 matmuls (cpu_features() says so; image features equal fp32's exactly) and keeps
    the KV cache in BF16: half the bytes per token, logits near fp32's but not equal to them."""
    code = f"""
import numpy as np, smolvision
ids = list(range(100, 130))
out = {{}}
for precision in ("fp32", "bf16"):
    with smolvision.load({str(mha_dir)!r}, precision=precision) as model:
        size = model.config.vision.image_size
        pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        out[precision] = (model.logits(ids), model.encode_pixel_values(pixels), model.sequence_bytes_per_token)
(l32, v32, b32), (l16, v16, b16) = out["fp32"], out["bf16"]
err = float(np.abs(l16 - l32).max() / (l32.max() - l32.min()))
print(smolvision.cpu_features()["bf16_matmul"], np.array_equal(v32, v16), 2 * (b16 - 4) == b32 - 4,
      0 < err < 1e-2)
"""
    # The child imports the same build as this process (installed or in-tree), from the folder holding it.
    home = str(Path(smolvision.__file__).resolve().parent.parent)
    env = dict(os.environ, SMOLVISION_ISA="avx512", PYTHONPATH=home + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=home, check=True, capture_output=True,
                            text=True)
    assert result.stdout.split() == ["False", "True", "True", "True"]


# ---- the contract on real weights ----

REAL_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
                "Explain photosynthesis in one sentence, for a child who likes trains and dinosaurs."]


@pytest.mark.slow
def test_bf16_on_real_weights_is_as_close_as_transformers_bf16(real_dir):
    """SmolLM2-135M-Instruct's real (BF16) weights: precision="bf16" logits are within MARGIN of
    transformers' own bfloat16 run's error, the greedy answer's first ids agree with the fp32
    reference's, and the answer still knows Paris."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_dir))
    with smolvision.load(real_dir, precision="bf16") as model:
        for prompt in REAL_PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
            ref = transformers_logits(real_dir, ids, torch.float32)
            theirs = relative_error(transformers_logits(real_dir, ids, torch.bfloat16), ref)
            ours = relative_error(model.logits(ids), ref)
            print(f"{prompt[:30]!r}: ours bf16 {ours:.2e}, transformers bf16 {theirs:.2e}")
            assert ours <= max(theirs * MARGIN, FLOOR)
            assert int(np.argmax(model.logits(ids))) == int(np.argmax(ref))
        answer = model.generate(REAL_PROMPTS[0], max_tokens=24).text
    assert "Paris" in answer
