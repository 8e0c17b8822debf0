#!/usr/bin/env bash
# tools/neon_check.sh [--native] - the NEON kernels against the portable ones, without ARM hardware.
#
# Cross-compiles the C library for aarch64 (cmake/aarch64-linux-gnu.cmake, no BLAS, no Python
# module) and tests/c/kernel_check.c against it, then runs the check under qemu-aarch64 for the
# "neon" kernels: it exits non-zero on any mismatch with the portable kernels or float64.
# Needs: apt-get install gcc-aarch64-linux-gnu qemu-user (or qemu-user-static), and cmake.
#
# --native builds the same driver for this machine instead and checks every x86 ISA it runs.
# The build goes to $NEON_CHECK_BUILD (default build-neon-check, or build-kernel-check-native).
set -euo pipefail
cd "$(dirname "$0")/.."

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi

if [ "${1:-}" = --native ]; then
  out=${NEON_CHECK_BUILD:-build-kernel-check-native}
  cmake -S . -B "$out" "${generator[@]}" -DSMOLVISION_PYTHON=OFF -DSMOLVISION_BLAS=none >/dev/null
  cmake --build "$out" >/dev/null
  ${CC:-cc} -std=c11 -O2 -Wall -Wextra -Icsrc tests/c/kernel_check.c -L"$out" -lsmolvision -lm \
      -Wl,-rpath,"$(cd "$out" && pwd)" -o "$out/kernel_check"
  exec "$out/kernel_check" portable avx2 avx512 avx512bf16
fi

CC=aarch64-linux-gnu-gcc
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
if ! command -v "$CC" >/dev/null || [ -z "$QEMU" ]; then
  echo "neon_check: needs $CC and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2
  exit 2
fi
out=${NEON_CHECK_BUILD:-build-neon-check}
cmake -S . -B "$out" "${generator[@]}" -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" \
    -DSMOLVISION_PYTHON=OFF -DSMOLVISION_BLAS=none >/dev/null
cmake --build "$out" >/dev/null
"$CC" -std=c11 -O2 -Wall -Wextra -Icsrc tests/c/kernel_check.c -L"$out" -lsmolvision -lm \
    -Wl,-rpath,'$ORIGIN' -o "$out/kernel_check"
# -L: the target's dynamic loader and libc, where the cross toolchain installed them.
run() { "$QEMU" -L /usr/aarch64-linux-gnu "$out/kernel_check" "$@"; }
run neon
# neon is the default there; SMOLVISION_ISA=portable lowers it, an x86 name is ignored.
selected=$(run --selected)/$(SMOLVISION_ISA=portable run --selected)/$(SMOLVISION_ISA=avx2 run --selected)
if [ "$selected" != neon/portable/neon ]; then
  echo "neon_check: selected ISA (default/portable/avx2) is $selected, not neon/portable/neon" >&2
  exit 1
fi
echo "neon_check: ok"
