#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [TARGET...] - builds the libFuzzer harnesses with clang
# (ASan + UBSan; CMake option SMOLVISION_FUZZ) and runs each for SECONDS (default 60), one after another,
# then prints executions/second and corpus size per target.
#
# Corpora live in fuzz/corpus/<target>/ (git-ignored), seeded by
# fuzz/make_seeds.py from the test fixtures; crashes land in
# fuzz/artifacts/<target>/.  The tokenizer harnesses load a real
# tokenizer.json: $SV_FUZZ_TOKENIZER, else the test fixture cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(json safetensors config tokenize tokenizer_load detokenize)
OUT=fuzz/build
# CMake's fuzz_<target> targets: the harnesses on the library's own source list and kernel flags,
# instrumented for coverage (the compiler is fixed when fuzz/build is first configured).
CC=${CC:-clang} cmake -S . -B "$OUT" -DSMOLVISION_FUZZ=ON -DSMOLVISION_PYTHON=OFF -DSMOLVISION_BLAS=none >/dev/null
nice cmake --build "$OUT" -j "$(nproc 2>/dev/null || echo 2)" --target "${TARGETS[@]/#/fuzz_}" >/dev/null

python3 fuzz/make_seeds.py fuzz/corpus
printf '%-16s %8s %10s %8s %s\n' target seconds execs/s corpus result
for t in "${TARGETS[@]}"; do
  bin="$OUT/fuzz_$t"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="$OUT/fuzz_$t.log"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  result=ok
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    "$bin" "fuzz/corpus/$t" "${dict[@]}" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || result=FAILED
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  secs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%-16s %8s %10s %8s %s (%s runs)\n' "$t" "$SECONDS_PER_TARGET" "$secs" "$corpus" "$result" "$execs"
  if [ "$result" != ok ]; then
    grep -A30 -m1 'ERROR\|==ERROR\|runtime error\|deadly signal' "$log" | head -40 || tail -40 "$log"
    exit 1
  fi
done
