#!/usr/bin/env bash
# tools/leakcheck.sh [MODEL_DIR...] - builds CMake's leakcheck target
# (tools/leakcheck.c on the library's own sources and kernel flags, every ISA's
# kernels included) with AddressSanitizer + LeakSanitizer + UBSan and runs it.  Without
# arguments it writes the tiny test models (tests/modelgen.py) and some broken
# copies of them (to exercise the cleanup of failed loads) into a temp dir.
# Exit status is non-zero on any leak or sanitizer error.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${LEAKCHECK_BUILD:-build-leakcheck}
cmake -S . -B "$OUT" -DSMOLVISION_TOOLS=ON -DSMOLVISION_PYTHON=OFF -DSMOLVISION_BLAS=none >/dev/null
cmake --build "$OUT" --target leakcheck -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 tests/modelgen.py mha "$tmp/mha" >/dev/null
  python3 tests/modelgen.py gqa "$tmp/gqa" --naming nested --shards >/dev/null
  # Failed loads at each stage: config, weights, tensor binding, tokenizer.
  for b in bad_config bad_header missing_tensor bad_tokenizer; do cp -r "$tmp/mha" "$tmp/$b"; done
  echo '{"model_type": "idefics3", ' >"$tmp/bad_config/config.json"
  printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a": nonsense }' >"$tmp/bad_header/model.safetensors"
  python3 - "$tmp/missing_tensor/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["text_config"]["num_hidden_layers"] += 1
json.dump(c, open(sys.argv[1], "w"))
PY
  echo '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "NFC"}}' \
    >"$tmp/bad_tokenizer/tokenizer.json"
  dirs=("$tmp/mha" "$tmp/gqa" "$tmp/bad_config" "$tmp/bad_header" "$tmp/missing_tensor" "$tmp/bad_tokenizer")
fi
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 "$OUT/leakcheck" "${dirs[@]}"
echo "leakcheck: no leaks"
