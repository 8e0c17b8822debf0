"""The C kernels against float64 numpy (and torch), and every SIMD path against the portable one.

Driven through the test hooks of smolvision.h (sv_debug_matmul, sv_debug_op).
ISA paths this CPU cannot run are skipped with the reason; the portable path
and the best one available always run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smolvision._native import ffi, lib

ISAS = ("portable", "avx2", "avx512", "avx512bf16", "amx", "neon")
DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
SHAPES = [(1, 1), (7, 33), (33, 129), (129, 7), (1000, 129), (33, 1000)]  # (rows, cols) of W
BATCHES = (1, 2, 3, 8, 17, 33, 300)  # the dot kernels' tile shapes and tails, and the packed GEMM above dot_max_n
BLAS_NEVER, BLAS_FIRST, BLAS_AS_SV_MATMUL = 0, 1, 2
# fp32 dot products over K terms: error well under 1e-5 of sum(|x_k w_k|) for these K
TOLERANCE = 1e-5


def as_weights(w: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw weights in dtype, the exact values they hold as float64)."""
    if dtype == "f32":
        raw = np.ascontiguousarray(w, np.float32)
        return raw, raw.astype(np.float64)
    if dtype == "f16":
        raw = w.astype(np.float16)
        return raw.view(np.uint16), raw.astype(np.float64)
    bf = torch.from_numpy(np.ascontiguousarray(w, np.float32)).to(torch.bfloat16)
    return bf.view(torch.int16).numpy().view(np.uint16), bf.double().numpy()


def matmul(isa: str, x: np.ndarray, w: np.ndarray, dtype: str, rows: int, b: np.ndarray | None, threads: int,
           blas: int = BLAS_AS_SV_MATMUL) -> np.ndarray:
    """y = x @ W^T + b with the named ISA's kernels; skips the test if this CPU cannot run them."""
    n, cols = x.shape
    y = np.full((n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul(isa.encode(), blas, ffi.from_buffer("float[]", x), n, ffi.from_buffer(w),
                                 DTYPES[dtype], rows, cols, ffi.from_buffer("float[]", b) if b is not None else ffi.NULL,
                                 ffi.from_buffer("float[]", y), threads, 1, ffi.NULL)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return y


def problem(n: int, rows: int, cols: int, dtype: str, bias: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w, w64 = as_weights(rng.standard_normal((rows, cols)).astype(np.float32), dtype)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    x64 = x.astype(np.float64)
    ref = x64 @ w64.T + (b if bias else 0.0)
    # the natural scale of a dot product's rounding error: sum |x_k w_k| (+ |b|)
    scale = np.abs(x64) @ np.abs(w64).T + (np.abs(b) if bias else 0.0)
    return x, w, b, ref, scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("blas", [BLAS_FIRST, BLAS_NEVER, BLAS_AS_SV_MATMUL], ids=["blas", "noblas", "default"])
def test_matmul_matches_float64_and_portable(isa, dtype, blas):
    worst = 0.0
    for n in BATCHES:
        for rows, cols in SHAPES:
            for bias in (True, False):
                x, w, b, ref, scale = problem(n, rows, cols, dtype, bias)
                portable = matmul("portable", x, w, dtype, rows, b, 1, blas)
                for threads in (1, 2):
                    y = matmul(isa, x, w, dtype, rows, b, threads, blas)
                    where = f"n={n} W[{rows}x{cols}] bias={bias} threads={threads}"
                    assert np.isfinite(y).all(), where
                    err = float(np.max(np.abs(y - ref) / scale))
                    assert err < TOLERANCE, f"{where}: error {err:.2e} vs float64"
                    diff = float(np.max(np.abs(y - portable) / scale))
                    assert diff < TOLERANCE, f"{where}: differs from portable by {diff:.2e}"
                    worst = max(worst, err)
    print(f"{isa} {dtype} blas={blas}: worst error {worst:.2e} of sum|x w|")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_widening_is_exact_for_special_values(isa, dtype):
    """Subnormals, extremes, inf and NaN widen exactly (y = 1 * w with K = 1)."""
    if dtype == "f16":
        values = np.array([0.0, -0.0, 6e-8, -6e-8, 3e-5, 6.1e-5, 65504, -65504, np.inf, -np.inf, np.nan, 1.5, -2.75],
                          np.float16)
        raw, exact = values.view(np.uint16), values.astype(np.float32)
    else:
        values = np.array([0.0, -0.0, 1e-40, -1e-40, 1.2e-38, 3e38, -3e38, np.inf, -np.inf, np.nan, 1.5, -2.75],
                          np.float32)
        raw, exact64 = as_weights(values[:, None], "bf16")
        exact = exact64.astype(np.float32).ravel()
    rows = len(exact)
    for n in (1, 40):  # the dot kernel and the GEMM path
        y = matmul(isa, np.ones((n, 1), np.float32), raw.reshape(rows, 1), dtype, rows, None, 1)
        for i in range(n):
            np.testing.assert_array_equal(y[i], exact)  # (a sum turns -0 into +0, which compares equal)


def test_matmul_decode_is_exact_across_threads():
    """Threads split whole rows of W, so the thread count must not change a single bit."""
    x, w, b, _, _ = problem(1, 1000, 1000, "bf16", True)
    best = ffi.string(lib.sv_kernels_isa()).decode()
    assert np.array_equal(matmul(best, x, w, "bf16", 1000, b, 1), matmul(best, x, w, "bf16", 1000, b, 2))


def test_matmul_unaligned_weights():
    """Tensors in a safetensors file need not be aligned to their element size."""
    x, w, b, ref, scale = problem(17, 33, 129, "f32", True)
    for dtype, raw in (("f32", w), ("bf16", as_weights(w, "bf16")[0])):
        _, w64 = as_weights(w, dtype)
        ref = x.astype(np.float64) @ w64.T + b
        buf = np.zeros(raw.nbytes + 1, np.uint8)
        shifted = buf[1:]
        shifted[:] = raw.view(np.uint8).ravel()
        for isa in ("portable", ffi.string(lib.sv_kernels_isa()).decode()):
            y = matmul(isa, x, shifted, dtype, 33, b, 2)
            assert np.max(np.abs(y - ref) / scale) < TOLERANCE, (dtype, isa)


@pytest.mark.parametrize("precision", [0, 1], ids=["fp32", "bf16"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 3, 16, 17, 100])  # GEMV, the dot kernels, AMX's few rows (2-16), the GEMMs
def test_shared_input_products_equal_separate_ones(isa, precision, n):
    """sv_matmul_shared (the model's q, k, v and gate, up) prepares x once for all its products: each product
    must come out exactly as on its own."""
    rows, cols, count = 40, 96, 3
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w, _ = as_weights(rng.standard_normal((count * rows, cols)).astype(np.float32), "bf16")
    shared = np.full((count, n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul_shared(isa.encode(), precision, ffi.from_buffer("float[]", x), n,
                                        ffi.from_buffer("uint16_t[]", w), rows, cols, count,
                                        ffi.from_buffer("float[]", shared), 2)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    for p in range(count):
        alone = np.full((n, rows), np.nan, np.float32)
        assert lib.sv_debug_matmul_precision(isa.encode(), precision, ffi.from_buffer("float[]", x), n,
                                             ffi.from_buffer(w[p * rows:(p + 1) * rows]), DTYPES["bf16"], rows, cols,
                                             ffi.NULL, ffi.from_buffer("float[]", alone), 2, 1, ffi.NULL) == lib.SV_OK
        np.testing.assert_array_equal(shared[p], alone, err_msg=f"product {p}")


def test_debug_matmul_rejects_bad_arguments():
    x = np.zeros((1, 4), np.float32)
    w = np.zeros((2, 4), np.float32)
    y = np.zeros((1, 2), np.float32)
    args = (ffi.from_buffer("float[]", x), 1, ffi.from_buffer(w))
    assert lib.sv_debug_matmul(b"sse9", 1, *args, 0, 2, 4, ffi.NULL, ffi.from_buffer("float[]", y), 1, 1, ffi.NULL) == lib.SV_ERR_ARG
    assert b"sse9" in ffi.string(lib.sv_last_error())
    assert lib.sv_debug_matmul(b"portable", 1, *args, 7, 2, 4, ffi.NULL, ffi.from_buffer("float[]", y), 1, 1, ffi.NULL) == lib.SV_ERR_ARG


def selected_isa_with(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("SMOLVISION_ISA", None)
    if env_value is not None:
        env["SMOLVISION_ISA"] = env_value
    # The child must import the same build as this process (installed or in-tree), so it runs from
    # the folder that holds that smolvision package.
    import smolvision
    home = str(Path(smolvision.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = home + os.pathsep + env.get("PYTHONPATH", "")
    code = "from smolvision._native import ffi, lib; print(ffi.string(lib.sv_kernels_isa()).decode())"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=home, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_smolvision_isa_lowers_but_never_raises_the_choice():
    best = selected_isa_with(None)
    assert best in ISAS
    assert selected_isa_with("portable") == "portable"
    assert selected_isa_with("no-such-isa") == best
    if best == "portable":
        assert selected_isa_with("avx512") == "portable"  # a name above the CPU is ignored
    elif best == "neon":
        assert selected_isa_with("avx2") == "neon"  # so is one of another architecture
    else:
        assert selected_isa_with("avx2") == "avx2"
        assert selected_isa_with("neon") == best


# ---- the small kernels ----

def op(isa: str, name: str, x: np.ndarray, w=None, b=None, other=None, eps: float = 0.0) -> np.ndarray:
    """One small kernel in the named ISA's build; skips the test if this CPU cannot run it."""
    out = np.ascontiguousarray(x, np.float32).copy()
    n, dim = out.shape
    ptr = lambda a: ffi.from_buffer("float[]", np.ascontiguousarray(a, np.float32)) if a is not None else ffi.NULL
    status = lib.sv_debug_op(isa.encode(), name.encode(), ffi.from_buffer("float[]", out), n, dim, ptr(w), ptr(b),
                             ptr(other), eps)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [1, 7, 16, 33, 1152])
def test_norms_match_float64(isa, dim):
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((5, dim)) * 3 + 10).astype(np.float32)  # |mean| >> std: cancellation-prone
    w = rng.standard_normal(dim).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32)
    x64 = x.astype(np.float64)
    ln = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-6) * w + b
    np.testing.assert_allclose(op(isa, "layernorm", x, w, b, eps=1e-6), ln, rtol=1e-5, atol=1e-5 * np.abs(ln).max())
    rms = x64 / np.sqrt((x64**2).mean(1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(op(isa, "rmsnorm", x, w, eps=1e-5), rms, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_activations_match_float64(isa):
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-30, 30, 6001), rng.standard_normal(999) * 4,
                        [0.0, -0.0, 1e-30, -1e-30, 90, -90, 1e4, -1e4]])
    x = x.astype(np.float32).reshape(1, -1)
    x64 = torch.from_numpy(x.astype(np.float64))
    gelu = torch.nn.functional.gelu(x64, approximate="tanh").numpy()
    # atol: deep in the negative tail gelu is ~1e-13 and even float64's 1 + tanh(z) cancels to noise
    np.testing.assert_allclose(op(isa, "gelu_tanh", x), gelu, rtol=2e-6, atol=1e-9)
    up = rng.standard_normal(x.shape).astype(np.float32)
    silu = (torch.nn.functional.silu(x64) * torch.from_numpy(up.astype(np.float64))).numpy()
    np.testing.assert_allclose(op(isa, "silu_mul", x, other=up), silu, rtol=2e-6, atol=1e-30)
    np.testing.assert_array_equal(op(isa, "add", x, other=up), x + up)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [1, 5, 16, 64, 1537])
@pytest.mark.parametrize("rows_dtype", ["f32", "bf16"])
@pytest.mark.parametrize("n_rows", [9, 37])  # 37: two blocks of 16 rows (the AVX-512 kernel's) and a rest
def test_dot_rows_matches_float64(isa, dim, rows_dtype, n_rows):
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((n_rows, dim)).astype(np.float32)
    if rows_dtype == "bf16":  # the hook truncates the rows to BF16: give it values that are BF16 already
        rows = (rows.view(np.uint32) & 0xFFFF0000).view(np.float32)
    x = rng.standard_normal(dim).astype(np.float32)
    ref = 0.125 * (rows.astype(np.float64) @ x.astype(np.float64))
    name = "dot_rows" if rows_dtype == "f32" else "dot_rows_bf16"
    got = op(isa, name, rows, other=x, eps=0.125).reshape(-1)[:n_rows]  # the hook writes row i's dot at x[i]
    # fp32 summation: error at most ~dim ulps of the sum of |products|, whatever the order
    bound = 0.125 * dim * 2.0**-23 * (np.abs(rows).astype(np.float64) @ np.abs(x)) + 1e-30
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) / bound)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [1, 5, 16, 729, 4000])
@pytest.mark.parametrize("name,rtol", [("softmax", 1e-5), ("softmax_bf16", 2.0**-8 + 1e-5)])
def test_softmax_matches_float64(isa, dim, name, rtol):
    """softmax in fp32; softmax_bf16, the BF16 attention's: its terms e^(x - max) rounded to BF16 (zeros after
    them: the hook gives NaN otherwise) over the sum it returns, within a BF16 rounding."""
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((4, dim)) * [[1], [10], [100], [1000]]).astype(np.float32)
    x[0, 0] = -np.inf  # a masked score
    if dim == 1:
        x[0, 0] = 5.0
    ref = torch.softmax(torch.from_numpy(x.astype(np.float64)), dim=-1).numpy()
    y = op(isa, name, x)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=rtol)


# ---- the vision tower's fused BF16 attention ----

def bf16_round(a: np.ndarray) -> np.ndarray:
    """Values rounded to BF16 (nearest even), as float64."""
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16).double().numpy()


@pytest.mark.parametrize("n,heads,head_dim", [(1, 1, 1), (2, 1, 3), (5, 3, 7), (33, 2, 16), (70, 2, 40),
                                              (100, 1, 33), (729, 16, 72)])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("isa", ["avx512bf16", "amx"])
def test_attention_bf16_matches_float64(n, heads, head_dim, threads, isa):
    """sv_attention_bf16 against float64 attention over the same BF16-rounded q * scale, k, v and
    probabilities: only the fp32 sums (and a probability landing on the other side of a BF16 rounding
    boundary) may differ.  Odd n and head_dim exercise the zero padding, n > 32 and head_dim > 32 several
    panels and query blocks."""
    rng = np.random.default_rng(n * 100 + head_dim)
    q, k, v = (rng.standard_normal((3, n, heads * head_dim)) * 2).astype(np.float32)
    scale = head_dim ** -0.5
    out = np.full((n, heads * head_dim), np.nan, np.float32)
    buf = lambda a: ffi.from_buffer("float[]", a)
    status = lib.sv_debug_attention_bf16(isa.encode(), buf(q), buf(k), buf(v), buf(out), n, heads, head_dim, scale,
                                         threads)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    assert_attention_close(out, reference_attention(q, k, v, n, heads, heads, head_dim, scale, causal=False))


def reference_attention(q, k, v, queries, heads, kv_heads, head_dim, scale, causal):
    """float64 attention over BF16-rounded q * scale, k, v and softmax terms e^(s - max) (query i at position
    keys - queries + i), divided by the terms' sum after the product with v, as the kernel does."""
    keys, group = k.shape[0], heads // kv_heads
    ref = np.empty((queries, heads * head_dim))
    visible = np.arange(keys)[None, :] <= (keys - queries + np.arange(queries))[:, None] if causal else True
    for h in range(heads):
        cols, kv = slice(h * head_dim, (h + 1) * head_dim), slice(h // group * head_dim, (h // group + 1) * head_dim)
        qh = bf16_round(q[:, cols].astype(np.float32) * np.float32(scale))
        scores = np.where(visible, qh @ bf16_round(k[:, kv]).T, -np.inf)
        terms = np.exp(scores - scores.max(1, keepdims=True))
        ref[:, cols] = bf16_round(terms.astype(np.float32)) @ bf16_round(v[:, kv]) / terms.sum(1, keepdims=True)
    return ref


def assert_attention_close(out, ref):
    err = np.abs(out - ref)
    assert np.isfinite(out).all()
    assert err.max() <= 1e-2 * np.abs(ref).max(), err.max()  # a few probabilities one BF16 step apart
    assert err.mean() <= 1e-4 * np.abs(ref).max(), err.mean()


@pytest.mark.parametrize("queries,keys,heads,kv_heads,head_dim", [
    (1, 1, 1, 1, 1), (3, 3, 2, 1, 5), (7, 40, 4, 2, 16), (33, 33, 3, 3, 64),  # a first chunk: queries == keys
    (70, 301, 6, 2, 64), (64, 97, 2, 1, 33),  # later chunks: keys cached before the queries
    (1, 40, 4, 2, 16), (1, 301, 6, 2, 64), (1, 97, 2, 1, 33), (1, 7, 1, 1, 72)])  # decode steps: one query
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ["avx512bf16", "amx"])
def test_attention_bf16_kv_matches_float64(queries, keys, heads, kv_heads, head_dim, causal, threads, isa):
    """The kernels as prompt chunks and decode steps (one query: the BF16 row kernels) run them on the
    decoder's BF16 KV cache: grouped KV heads, the causal mask offset by the keys cached before the chunk,
    V^T rows longer than the keys (the cache's capacity)."""
    rng = np.random.default_rng(queries * 1000 + keys)
    q = (rng.standard_normal((queries, heads * head_dim)) * 2).astype(np.float32)
    k, v = (rng.standard_normal((2, keys, kv_heads * head_dim)) * 2).astype(np.float32)
    scale = head_dim ** -0.5
    out = np.full((queries, heads * head_dim), np.nan, np.float32)
    buf = lambda a: ffi.from_buffer("float[]", a)
    status = lib.sv_debug_attention_bf16_kv(isa.encode(), buf(q), buf(k), buf(v), buf(out), queries, keys, heads, kv_heads,
                                            head_dim, int(causal), scale, threads)
    if status == lib.SV_ERR_UNSUPPORTED:
        pytest.skip(ffi.string(lib.sv_last_error()).decode())
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    assert_attention_close(out, reference_attention(q, k, v, queries, heads, kv_heads, head_dim, scale, causal))
