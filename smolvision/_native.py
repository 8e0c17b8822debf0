"""The C engine's cffi module, loaded once, and the one place C status codes become exceptions.

The modules that call the engine (model, generation, tokenizer, profile) import `ffi` and `lib` from
here and pass every sv_status through `check` (or `raise_status`), so the mapping from status to
exception class is written once.
"""
from __future__ import annotations

from typing import NoReturn

from . import errors

try:
    from ._smolvision import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "smolvision's C engine is not built: install with `pip install .`, or for development "
        "run `cmake -S . -B build && cmake --build build` and use PYTHONPATH=." ) from exc

__all__ = ["ffi", "lib", "check", "last_error", "build_info", "cpu_features", "version"]


def last_error() -> str:
    """The C library's message for the last failure on this thread."""
    return ffi.string(lib.sv_last_error()).decode("utf-8", "replace")


def raise_status(status: int, error: type[errors.Error]) -> NoReturn:
    """Raises the exception for a failed C call; `error` is the class for the caller's domain."""
    message = last_error() or f"smolvision C call failed with status {status}"
    if status == lib.SV_ERR_ARG:
        raise errors.InputError(message)
    if status == lib.SV_ERR_NOMEM:
        raise errors.ResourceError(message)
    raise error(message)


def check(status: int, error: type[errors.Error] = errors.Error) -> None:
    """Turns an sv_status into an exception; `error` is the class for the caller's domain."""
    if status != lib.SV_OK:
        raise_status(status, error)


def version() -> str:
    return ffi.string(lib.sv_version()).decode()


def build_info() -> str:
    """How the C library was built, e.g. 'blas=scipy-openblas32 sanitize=off'."""
    return ffi.string(lib.sv_build_info()).decode()


def cpu_features() -> dict:
    """Which matmul kernels this process runs: {"kernels": "portable" | "avx2" | "avx512" | "avx512bf16" | "amx"
    | "neon" (the best this CPU runs, or lower if the SMOLVISION_ISA environment variable says so), "bf16_matmul":
    whether precision="bf16" runs BF16 x BF16 kernels here (AVX512_BF16, AMX) rather than falling back to fp32,
    "quant_kernels": the int8 kernels of quant="q8" / "q4": "avx512vnni", "avx2" or "portable",
    "amx": what became of the AMX tile GEMM: "on", "absent" (CPU or build), "off (SMOLVISION_ISA)",
    "refused: ..." (Linux did not grant the tile state) or "failed self-check: ...", "bf16_gemm": what
    precision="bf16" runs image tiles and prompts on: "amx", "avx512bf16", "fp32 (faster than avx512bf16
    here)" (measured once per process: on some CPUs, Sapphire Rapids among them, vdpbf16ps is slower than
    FP32 FMA) or "fp32"}.
    On a CPU with AMX the first call asks Linux for the tile state and runs the AMX self-check."""
    return {"kernels": ffi.string(lib.sv_kernels_isa()).decode(), "bf16_matmul": bool(lib.sv_kernels_bf16()),
            "quant_kernels": ffi.string(lib.sv_kernels_quant()).decode(),
            "amx": ffi.string(lib.sv_kernels_amx()).decode(),
            "bf16_gemm": ffi.string(lib.sv_kernels_bf16_gemm()).decode()}
