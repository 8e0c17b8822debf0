"""The aarch64 NEON kernels against the portable ones, without ARM hardware.

tools/neon_check.sh cross-compiles the C library for aarch64 and runs tests/c/kernel_check.c under
qemu-aarch64 (matmul shapes across the dot / GEMM switch, F32/F16/BF16 weights, 1 and 3 threads,
the small kernels, SMOLVISION_ISA lowering).  Skipped unless the cross compiler, qemu and cmake are
installed (apt-get install gcc-aarch64-linux-gnu qemu-user; .ci/run installs them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "neon_check.sh"


def missing_tools() -> list[str]:
    tools = {"aarch64-linux-gnu-gcc": ["aarch64-linux-gnu-gcc"], "cmake": ["cmake"],
             "qemu-aarch64": ["qemu-aarch64", "qemu-aarch64-static"]}
    return [name for name, candidates in tools.items() if not any(shutil.which(c) for c in candidates)]


@pytest.mark.skipif(not SCRIPT.exists(), reason="tools/neon_check.sh is not here (tests run outside the source tree)")
@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} "
                    "(apt-get install gcc-aarch64-linux-gnu qemu-user cmake)")
def test_neon_kernels_match_portable_under_qemu(tmp_path):
    env = dict(os.environ, NEON_CHECK_BUILD=str(tmp_path / "build-aarch64"))
    for name in ("SMOLVISION_ISA", "LD_PRELOAD", "ASAN_OPTIONS"):  # the x86 sanitizer runtime is no help here
        env.pop(name, None)
    run = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "neon       ok:" in run.stdout and "neon_check: ok" in run.stdout
