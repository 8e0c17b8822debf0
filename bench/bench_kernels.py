"""Benchmarks the matmul kernels per ISA path and thread count.

    PYTHONPATH=. python3 bench/bench_kernels.py [--quick]

GEMV: decode shape, n=1 over a BF16 2048x8192 weight (memory bound: GB/s of
weights streamed, against the machine's read bandwidth; its 33.6 MB are about
the size of Zen 4's 32 MB L3, so back-to-back runs partly hit L3).  GEMM: vision shape,
n=729 tokens through a 4304x1152 weight (SigLIP fc1; compute bound: GFLOP/s,
against the FP32 FMA peak), through BLAS sgemm and through our own GEMM
kernels (sv_matmul uses its own where the ISA has one).  The "avx512bf16 bf16"
rows run precision="bf16": x rounded to BF16, BF16 x BF16 products summed in
fp32 (vdpbf16ps); the "amx bf16" row the same on AMX tiles (tdpbf16ps), where
they run; the percentages there are still of the FP32 FMA peak.
Layer: the six matmuls of one SigLIP-SO400M encoder layer (q, k, v, o
1152x1152, fc1 4304x1152, fc2 1152x4304; n=729, BF16 weights) in each precision.  Figures for this machine
are in shared/MEASUREMENTS.md; pass --bandwidth/--peak to compare elsewhere.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from smolvision._native import ffi, lib

DTYPE_CODES = {"f32": 0, "f16": 1, "bf16": 2}
ISAS = ("portable", "avx2", "avx512")


def to_weights(w: np.ndarray, dtype: str) -> np.ndarray:
    """fp32 W -> the raw array the kernels read for that dtype (BF16 by truncation)."""
    if dtype == "f32":
        return np.ascontiguousarray(w, np.float32)
    if dtype == "f16":
        return w.astype(np.float16).view(np.uint16)
    return (np.ascontiguousarray(w, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def time_matmul(isa: str, use_blas: bool, x: np.ndarray, w: np.ndarray, dtype: str, rows: int, cols: int,
                threads: int, repeat: int, bf16: bool = False) -> tuple[float, float] | None:
    """(wall seconds, CPU seconds per thread) per matmul, best of 3 timed batches; None if this CPU lacks the ISA.

    On a shared, loaded machine the wall time mostly measures the other tenants;
    CPU time per thread estimates what an idle machine would show.  bf16: precision "bf16"
    (sv_debug_matmul_precision, which never uses BLAS) instead of fp32.
    """
    n = x.shape[0]
    y = np.empty((n, rows), np.float32)
    seconds = ffi.new("double *")
    best = best_cpu = None
    for _ in range(3):
        cpu_start = time.process_time()
        args = (ffi.from_buffer("float[]", x), n, ffi.from_buffer(w), DTYPE_CODES[dtype], rows, cols, ffi.NULL,
                ffi.from_buffer("float[]", y), threads, repeat, seconds)
        if bf16:
            status = lib.sv_debug_matmul_precision(isa.encode(), 1, *args)
        else:
            status = lib.sv_debug_matmul(isa.encode(), 1 if use_blas else 0, *args)
        if status == lib.SV_ERR_UNSUPPORTED:
            return None
        if status != lib.SV_OK:
            raise RuntimeError(ffi.string(lib.sv_last_error()).decode())
        per_call = seconds[0] / repeat
        cpu = (time.process_time() - cpu_start) / (repeat + 1) / threads  # + 1: the warm-up run
        best = per_call if best is None else min(best, per_call)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bandwidth", type=float, default=50.5, help="machine read bandwidth, GB/s (2 threads)")
    parser.add_argument("--bandwidth-1", type=float, default=26.8, help="read bandwidth of one thread, GB/s")
    parser.add_argument("--peak", type=float, default=234.0, help="FP32 FMA peak, GFLOP/s (2 threads)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"selected ISA: {ffi.string(lib.sv_kernels_isa()).decode()}   build: {ffi.string(lib.sv_build_info()).decode()}"
          f"   load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("wall: measured; cpu: from CPU time per thread, what an idle machine would show")

    rows, cols = 2048, 8192
    w = to_weights(rng.standard_normal((rows, cols), np.float32) * 0.02, "bf16")
    x = rng.standard_normal((1, cols), np.float32)
    print(f"\nGEMV n=1, BF16 W[{rows}x{cols}] ({w.nbytes / 1e6:.1f} MB); machine {args.bandwidth} GB/s")
    print(f"{'isa':<15}{'threads':>8}{'wall us':>10}{'GB/s':>8}{'of bw':>8}{'cpu us':>10}{'GB/s':>8}{'of bw':>8}")
    for isa, bf16 in [(isa, False) for isa in ISAS] + [("avx512bf16", True)]:
        label = f"{isa} bf16" if bf16 else isa
        for threads in (1, 2):
            times = time_matmul(isa, False, x, w, "bf16", rows, cols, threads, 20 if args.quick else 100, bf16)
            if times is None:
                print(f"{label:<15}{threads:>8}  (not supported here)")
                continue
            bw = args.bandwidth if threads == 2 else args.bandwidth_1
            line = f"{label:<15}{threads:>8}"
            for t in times:
                gbs = w.nbytes / t / 1e9
                line += f"{t * 1e6:>10.0f}{gbs:>8.1f}{gbs / bw:>8.0%}"
            print(line)

    n, rows, cols = 729, 4304, 1152
    flops = 2.0 * n * rows * cols
    x = rng.standard_normal((n, cols), np.float32)
    wf = rng.standard_normal((rows, cols), np.float32) * 0.02
    print(f"\nGEMM n={n}, W[{rows}x{cols}] ({flops / 1e9:.2f} GFLOP); FP32 peak {args.peak} GFLOP/s (2 threads)")
    print(f"{'isa':<15}{'dtype':>6}{'gemm':>6}{'threads':>8}{'wall ms':>9}{'GFLOP/s':>9}{'of peak':>8}"
          f"{'cpu ms':>9}{'GFLOP/s':>9}{'of peak':>8}")
    for dtype in ("bf16", "f32"):
        w = to_weights(wf, dtype)
        runs = [(isa, use_blas, False) for isa in ISAS for use_blas in (True, False)]
        if dtype == "bf16":
            runs += [("avx512bf16", False, True), ("amx", False, True)]  # amx: the tiles, where they run
        for isa, use_blas, bf16 in runs:
            label = f"{isa} bf16" if bf16 else isa
            for threads in (1, 2):
                if isa == "portable" and not use_blas and threads == 1:
                    continue  # minutes of scalar C; the 2-thread row shows its speed
                times = time_matmul(isa, use_blas, x, w, dtype, rows, cols, threads, 1 if args.quick else 3, bf16)
                if times is None:
                    print(f"{label:<15}{dtype:>6}{'':>6}{threads:>8}  (not supported here)")
                    continue
                peak = args.peak * threads / 2
                line = f"{label:<15}{dtype:>6}{'blas' if use_blas else 'own':>6}{threads:>8}"
                for t in times:
                    gf = flops / t / 1e9
                    line += f"{t * 1e3:>9.1f}{gf:>9.1f}{gf / peak:>8.0%}"
                print(line)

    layer = [(1152, 1152)] * 4 + [(4304, 1152), (1152, 4304)]  # (rows, cols) of W: q, k, v, o, fc1, fc2
    flops = sum(2.0 * n * r * c for r, c in layer)
    weights = [to_weights(rng.standard_normal((r, c), np.float32) * 0.02, "bf16") for r, c in layer]
    inputs = {c: rng.standard_normal((n, c), np.float32) for c in (1152, 4304)}
    print(f"\nSigLIP-SO400M layer matmuls, n={n}, BF16 weights ({flops / 1e9:.1f} GFLOP), avx512bf16 kernels")
    print(f"{'precision':<10}{'threads':>8}{'wall ms':>9}{'cpu ms':>9}{'GFLOP/s':>9}")
    for bf16 in (False, True):
        for threads in (1, 2):
            total = [0.0, 0.0]
            for (r, c), w in zip(layer, weights):
                times = time_matmul("avx512bf16", False, inputs[c], w, "bf16", r, c, threads, 1 if args.quick else 2,
                                    bf16)
                if times is None:
                    break
                total = [a + b for a, b in zip(total, times)]
            else:
                print(f"{'bf16' if bf16 else 'fp32':<10}{threads:>8}{total[0] * 1e3:>9.1f}{total[1] * 1e3:>9.1f}"
                      f"{flops / total[1] / 1e9:>9.1f}")
                continue
            print(f"{'bf16' if bf16 else 'fp32':<10}{threads:>8}  (not supported here)")


if __name__ == "__main__":
    main()
