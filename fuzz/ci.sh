#!/usr/bin/env bash
# fuzz/ci.sh - the CI fuzz step: every libFuzzer target for SECONDS each
# (default 20; 6 targets = 2 minutes plus ~1 minute of clang builds), with
# fresh seeds from the fixtures.  Needs clang and the test fixture tokenizer
# (~/.cache/smolvision-tests/smollm2-tokenizer, written by the test session)
# or $SV_FUZZ_TOKENIZER.  Fails on the first crash, leak, UB or timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang >/dev/null || { echo "fuzz/ci.sh: clang not installed" >&2; exit 1; }
exec fuzz/run.sh "${1:-20}"
