"""precision="bf16": the BF16 x BF16 kernels against numpy, then the issue's contract on the tiny models.

The kernels (driven through the sv_debug_matmul_precision test hook) must
compute exactly the BF16-rounded products, summed in fp32: checked against
float64 sums of the same rounded values with the fp32 accumulation bound.
The models must then be as close to transformers' fp32 run as transformers'
own BF16 run is.  Everything BF16 needs AVX512_BF16 and skips without it;
the fp32 fallback is checked everywhere.
"""
from __future__ import annotations

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
