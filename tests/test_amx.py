"""The AMX BF16 GEMM (level "amx"): its tile code on the plain-C emulation everywhere, the real tiles where
they run.

What is checked where:
- Everywhere: the emulation of the tile instructions (csrc/kernels/amx_emulation.h) against an independent
  numpy transcription of the Intel SDM's TDPBF16PS pseudo-code; then the kernel source itself
  (matmul_amx_impl.h, the same file the real build compiles) on that emulation through the matmul driver,
  against float64 and the portable fp32 GEMM on edge shapes; the self-check dispatch runs before using
  real tiles; and a planted bug (pack swapping the halves of each BF16 pair) that all of these must catch.
- Only on a CPU where cpu_features()["amx"] == "on" (AMX, no SMOLVISION_ISA below it, the tile state
  granted, the self-check passed): the real tile instructions through the same comparisons, in this
  process and in a plain child process.  The project's machines (Sapphire Rapids) run them.

Why the emulation can be trusted to stand in: it is written from the SDM's definitions (LDTILECFG,
TILELOADD, TDPBF16PS, TILESTORED), not from the kernel, and test_emulation_follows_the_sdm pins it to a
second transcription here, including the pair layout (even with even, odd with odd), partial tile
shapes, denormals as zero and the shape fault.  The kernel's own choices (which tile holds what, strides,
padding) are only ever checked against plain arithmetic.
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

AMX = smolvision.cpu_features()["amx"]
LOWERED = os.environ.get("SMOLVISION_ISA") not in (None, "", "amx")  # a lower level asked for
BF16 = 1
# (rows, cols) of W: one weight, K below one tile row, odd K, a partial panel, a tile's K exactly, several
# tile rows with a tail, panel tails of 1 and 31 rows; for the few-rows kernel (2 to 16 input rows, K whole
# tiles): two 16-row blocks, one block and a padded last one, three blocks and a padded one
SHAPES = [(1, 1), (7, 33), (33, 129), (129, 7), (40, 1000), (65, 31), (32, 32), (17, 64), (49, 96)]
# one row, a tile's rows and either side of it, a 32-row step and either side, several steps with a tail
BATCHES = (1, 2, 15, 16, 17, 31, 32, 33, 47, 100)


def to_bf16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(BF16 bits as uint16, the values they hold as float64), rounded to nearest even as torch does."""
    bf = torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)
    return bf.view(torch.int16).numpy().view(np.uint16), bf.double().numpy()


def bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


# ---- the emulation against the SDM ----

def tile_config(shapes: dict[int, tuple[int, int]]) -> np.ndarray:
    """LDTILECFG's 64 bytes, palette 1: {tile: (rows, colsb)}."""
    config = np.zeros(64, np.uint8)
    config[0] = 1
    for t, (rows, colsb) in shapes.items():
        config[16 + 2 * t: 18 + 2 * t] = np.frombuffer(np.uint16(colsb).tobytes(), np.uint8)
        config[48 + t] = rows
    return config


def emulated_dpbf16ps(config: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Tiles 0 (c), 1 (a), 2 (b) as 16 x 64-byte images; returns c's image after TDPBF16PS tmm0, tmm1, tmm2."""
    out = np.ascontiguousarray(c.view(np.uint8)).copy()
    ptr = lambda x: ffi.from_buffer("uint8_t[]", np.ascontiguousarray(x).view(np.uint8))
    assert lib.sv_debug_amx_emulated_dpbf16ps(ptr(config), ptr(a), ptr(b), ffi.from_buffer("uint8_t[]", out)) == lib.SV_OK
    return out.view(np.float32).reshape(16, 16)


def sdm_dpbf16ps(rows: int, pairs: int, cols: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """TDPBF16PS as the SDM writes it, for tile shapes rows(c) = rows(a) = rows, colsb(a) = 4 pairs = 4 rows(b),
    colsb(c) = colsb(b) = 4 cols: for each m, n: c[m][n] += sum over k of a.row[m].bf16[2k] * b.row[k].bf16[2n]
    + a.row[m].bf16[2k+1] * b.row[k].bf16[2n+1] (a BF16 denormal counts as zero).  Only those rows and columns
    of c's image are written.  a, b: uint16 [16, 32]; c: float32 [16, 16]."""
    daz = lambda bits: np.where((bits & 0x7F80) == 0, 0.0, bf16_values(bits))
    A, B = daz(a), daz(b)
    out = c.copy()
    for m in range(rows):
        for n in range(cols):
            even = sum(A[m, 2 * k] * B[k, 2 * n] for k in range(pairs))
            odd = sum(A[m, 2 * k + 1] * B[k, 2 * n + 1] for k in range(pairs))
            out[m, n] = np.float32(c[m, n] + even + odd)
    return out


def small_integer_tiles(seed: int):
    """Tiles whose products and sums are exact in fp32 whatever the order: BF16 integers in [-8, 8]."""
    rng = np.random.default_rng(seed)
    a, _ = to_bf16(rng.integers(-8, 9, (16, 32)).astype(np.float32))
    b, _ = to_bf16(rng.integers(-8, 9, (16, 32)).astype(np.float32))
    c = rng.integers(-100, 100, (16, 16)).astype(np.float32)
    return a, b, c


@pytest.mark.parametrize("rows,pairs,cols", [(16, 16, 16), (5, 3, 6), (1, 1, 1), (16, 7, 13), (9, 16, 2)])
def test_emulation_follows_the_sdm(rows, pairs, cols):
    a, b, c = small_integer_tiles(rows * 100 + pairs * 10 + cols)
    config = tile_config({0: (rows, 4 * cols), 1: (rows, 4 * pairs), 2: (pairs, 4 * cols)})
    got = emulated_dpbf16ps(config, a, b, c)
    np.testing.assert_array_equal(got, sdm_dpbf16ps(rows, pairs, cols, a, b, c))
    # The pair layout matters: with the halves of b's pairs swapped the answer must change.
    swapped = b.reshape(16, 16, 2)[:, :, ::-1].reshape(16, 32).copy()
    assert not np.array_equal(got, sdm_dpbf16ps(rows, pairs, cols, a, swapped, c))


def test_emulation_treats_bf16_denormals_as_zero():
    a = np.zeros((16, 32), np.uint16)
    b = np.zeros((16, 32), np.uint16)
    a[0, 0] = 0x0040          # a BF16 denormal, about 5.9e-39
    b[0, 0] = 0x7F00          # 2^127: the exact product would be about 1.0
    a[0, 1], b[0, 1] = 0x3F80, 0x4000  # 1 * 2 in the odd half of the pair
    config = tile_config({0: (16, 64), 1: (16, 64), 2: (16, 64)})
    got = emulated_dpbf16ps(config, a, b, np.zeros((16, 16), np.float32))
    assert got[0, 0] == 2.0
    np.testing.assert_array_equal(got, sdm_dpbf16ps(16, 16, 16, a, b, np.zeros((16, 16), np.float32)))


def test_emulation_faults_on_mismatched_shapes(capfd):
    """Where the hardware raises #UD (colsb(a) != 4 rows(b)), the emulation poisons the result."""
    a, b, c = small_integer_tiles(7)
    config = tile_config({0: (4, 16), 1: (4, 16), 2: (3, 16)})
    got = emulated_dpbf16ps(config, a, b, c)
    assert np.isnan(got[:4, :4]).all()
    assert "emulated AMX fault" in capfd.readouterr().err


# ---- the kernel on the emulation, through the driver ----

def amx_emulated(x: np.ndarray, w_bits: np.ndarray, rows: int, b: np.ndarray | None, threads: int,
                 planted: int = 0) -> np.ndarray:
    n, cols = x.shape
    y = np.full((n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul_amx_emulated(
        planted, ffi.from_buffer("float[]", x), n, ffi.from_buffer("uint16_t[]", w_bits), rows, cols,
        ffi.from_buffer("float[]", b) if b is not None else ffi.NULL, ffi.from_buffer("float[]", y), threads)
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return y


def portable_fp32(x: np.ndarray, w_bits: np.ndarray, rows: int, b: np.ndarray | None) -> np.ndarray:
    """The portable fp32 GEMM (precision fp32, isa portable) on the same BF16 weights."""
    n, cols = x.shape
    y = np.full((n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul_precision(
        b"portable", 0, ffi.from_buffer("float[]", x), n, ffi.from_buffer(w_bits), 2, rows, cols,
        ffi.from_buffer("float[]", b) if b is not None else ffi.NULL, ffi.from_buffer("float[]", y), 1, 1, ffi.NULL)
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return y


def problem(n: int, rows: int, cols: int, bias: bool):
    """x, W's BF16 bits, b, the float64 reference over x rounded to BF16, and the fp32 summation bound."""
    rng = np.random.default_rng(rows * 10000 + cols * 10 + n)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w_bits, w64 = to_bf16(rng.standard_normal((rows, cols)))
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    xr_bits, x64 = to_bf16(x)
    ref = x64 @ w64.T + (b.astype(np.float64) if bias else 0)
    magnitude = np.abs(x64) @ np.abs(w64).T + (np.abs(b.astype(np.float64)) if bias else 0)
    # fp32 sums of K exact BF16 products (+ bias), any order: |error| <= (K + 1) 2^-24 sum |terms|
    bound = (cols + 1) * 2.0**-24 * magnitude + 1e-30
    return x, x64.astype(np.float32), w_bits, b, ref, bound


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_amx_kernel_on_emulation_matches_float64_and_portable(rows, cols):
    for n in BATCHES:
        for bias in (True, False):
            x, x_rounded, w_bits, b, ref, bound = problem(n, rows, cols, bias)
            portable = portable_fp32(x_rounded, w_bits, rows, b)
            for threads in (1, 2):
                y = amx_emulated(x, w_bits, rows, b, threads)
                where = f"n={n} W[{rows}x{cols}] bias={bias} threads={threads}"
                assert np.all(np.abs(y - ref) <= bound), f"{where}: {np.max(np.abs(y - ref) / bound):.2f} bounds"
                assert np.all(np.abs(y - portable) <= 2 * bound), where


def test_planted_bug_fails_the_comparison():
    """The comparison above can fail: pack with each BF16 pair's halves swapped."""
    x, _, w_bits, b, ref, bound = problem(17, 33, 129, True)
    assert np.all(np.abs(amx_emulated(x, w_bits, 33, b, 2) - ref) <= bound)
    assert np.max(np.abs(amx_emulated(x, w_bits, 33, b, 2, planted=1) - ref) / bound) > 100


def test_self_check_passes_the_kernel_and_fails_the_planted_bug():
    """The check dispatch runs before the real tiles are used: green on the emulated kernel, red (with
    the reason) on the planted bug, which is what turns AMX off for a process."""
    assert lib.sv_debug_amx_self_check(0) == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    assert lib.sv_debug_amx_self_check(1) == lib.SV_ERR_UNSUPPORTED
    assert "plain C" in ffi.string(lib.sv_last_error()).decode()


# ---- dispatch and reporting ----

def test_cpu_features_report_amx_consistently():
    features = smolvision.cpu_features()
    status = features["amx"]
    assert status in ("on", "absent", "off (SMOLVISION_ISA)") or \
        status.startswith(("refused: ", "failed self-check: "))
    assert (status == "on") == (features["kernels"] == "amx")
    if LOWERED:
        assert status in ("absent", "off (SMOLVISION_ISA)")
    if status == "on":
        assert features["bf16_matmul"]
    # what prompt-sized BF16 products run on: the tiles exactly where AMX is on, fp32 where there are no BF16
    # kernels, else whichever of the AVX512_BF16 and the fp32 GEMM won the race (no figure checked: timing)
    assert (features["bf16_gemm"] == "amx") == (status == "on")
    assert (features["bf16_gemm"] == "fp32") == (not features["bf16_matmul"])
    assert features["bf16_gemm"] in ("amx", "avx512bf16", "fp32 (faster than avx512bf16 here)", "fp32")


def child_features(isa: str | None, code: str = "") -> dict:
    """cpu_features() of a fresh process with SMOLVISION_ISA=isa (None: unset), after running `code`, whose
    variable `extra` (if it sets one) comes back under "extra"."""
    import json
    import smolvision as package
    home = str(Path(package.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("SMOLVISION_ISA", "PYTHONFAULTHANDLER")}
    if isa is not None:
        env["SMOLVISION_ISA"] = isa
    env["PYTHONPATH"] = home + os.pathsep + os.environ.get("PYTHONPATH", "")
    program = ("import json, smolvision\nfrom smolvision._native import ffi, lib\nextra = None\n" + code +
               "\nprint(json.dumps(dict(smolvision.cpu_features(), extra=extra)))")
    out = subprocess.run([sys.executable, "-c", program], env=env, cwd=home, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# A BF16 product of 32 rows at level amx through the test hook: its status code in `extra`.
AMX_HOOK = """
import numpy as np
x = np.ones((32, 32), np.float32); w = np.zeros((32, 32), np.uint16); y = np.empty((32, 32), np.float32)
extra = lib.sv_debug_matmul_precision(b"amx", 1, ffi.from_buffer("float[]", x), 32, ffi.from_buffer(w), 2, 32, 32,
                                      ffi.NULL, ffi.from_buffer("float[]", y), 1, 1, ffi.NULL)
"""


@pytest.mark.skipif(AMX == "absent", reason="no AMX on this CPU (or in this build): nothing to turn off")
def test_smolvision_isa_below_amx_turns_it_off():
    """A lower SMOLVISION_ISA runs no tile instruction, not even through the test hook naming level amx."""
    features = child_features("avx512bf16", AMX_HOOK)
    assert features["amx"] == "off (SMOLVISION_ISA)"
    assert features["kernels"] == "avx512bf16"
    assert features["bf16_gemm"] in ("avx512bf16", "fp32 (faster than avx512bf16 here)")
    assert features["extra"] == lib.SV_ERR_UNSUPPORTED


def test_amx_is_the_default_where_the_cpu_has_it():
    """With no SMOLVISION_ISA (or an empty one) a CPU with AMX runs level amx: its status is "on" or why not."""
    for isa in (None, ""):
        features = child_features(isa, AMX_HOOK)
        assert features["amx"] != "off (SMOLVISION_ISA)"
        assert (features["kernels"] == "amx") == (features["amx"] == "on")
        assert (features["extra"] == lib.SV_OK) == (features["amx"] == "on")


# ---- the real tiles (only where they run) ----

def real_amx(x: np.ndarray, w_bits: np.ndarray, rows: int, b: np.ndarray | None, threads: int) -> np.ndarray:
    """Precision BF16 at level amx, as sv_matmul runs it: the tiles above min_n (4) rows, AVX512_BF16's dot
    kernel up to it."""
    n, cols = x.shape
    y = np.full((n, rows), np.nan, np.float32)
    status = lib.sv_debug_matmul_precision(
        b"amx", BF16, ffi.from_buffer("float[]", x), n, ffi.from_buffer(w_bits), 2, rows, cols,
        ffi.from_buffer("float[]", b) if b is not None else ffi.NULL, ffi.from_buffer("float[]", y), threads, 1,
        ffi.NULL)
    assert status == lib.SV_OK, ffi.string(lib.sv_last_error()).decode()
    return y


def real_amx_failures(shapes=SHAPES) -> list[str]:
    """Every (shape, n, bias, threads) where the real tiles break the fp32 bound or leave the emulation's
    results by more than it; empty if none."""
    failures = []
    for rows, cols in shapes:
        for n in BATCHES:
            for bias in (True, False):
                x, _, w_bits, b, ref, bound = problem(n, rows, cols, bias)
                emulated = amx_emulated(x, w_bits, rows, b, 1)
                for threads in (1, 2):
                    y = real_amx(x, w_bits, rows, b, threads)
                    where = f"n={n} W[{rows}x{cols}] bias={bias} threads={threads}"
                    if not np.all(np.abs(y - ref) <= bound):
                        failures.append(f"{where}: {np.nanmax(np.abs(y - ref) / bound):.2f} bounds from float64")
                    elif not np.all(np.abs(y - emulated) <= 2 * bound):
                        failures.append(f"{where}: differs from the emulation")
    return failures


@pytest.mark.skipif(AMX != "on", reason=f"the real AMX path does not run in this process (amx: {AMX})")
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_real_amx_matches_float64_and_emulation(rows, cols):
    assert real_amx_failures([(rows, cols)]) == []


def child_report() -> dict:
    """What a fresh process sees: the AMX status and, where the tiles run, the real-path failures."""
    return {"amx": AMX, "failures": real_amx_failures() if AMX == "on" else []}


@pytest.mark.skipif(AMX == "absent", reason="no AMX on this CPU (or in this build)")
def test_real_amx_in_a_fresh_process():
    """The same checks in a plain child process.  Under pytest Linux may refuse the tile state: the
    faulthandler plugin's alternate signal stack can be smaller than a signal frame with 8 KB of tiles, and
    the grant then fails with ENOSPC.  A plain interpreter has no such stack, so the real tiles run here
    wherever the CPU has them; and a failed self-check (the kernel disagreeing with plain C on this CPU)
    fails this test rather than passing quietly on the fallback."""
    import json
    home = str(Path(smolvision.__file__).resolve().parent.parent)
    # the default level (amx), which conftest.py turns off in this process where Linux refused it the tile state
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONFAULTHANDLER", "SMOLVISION_ISA")}
    env["PYTHONPATH"] = os.pathsep.join([home, str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    code = "import json, test_amx; print(json.dumps(test_amx.child_report()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=home, check=True, capture_output=True, text=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if report["amx"].startswith("refused: ") or report["amx"].startswith("off "):
        pytest.skip(f"the real AMX path does not run in a plain process either: {report['amx']}")
    assert report["amx"] == "on"
    assert report["failures"] == []
