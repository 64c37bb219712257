#!/usr/bin/env bash
# Builds and runs the libFuzzer harness of the C ABI (Tests/fuzz/fuzz_abi.c).
#
#   scripts/fuzz.sh --runs N        fixed number of executions over the seed
#                                   corpus (the test command's short run)
#   scripts/fuzz.sh [--time S]      run for S seconds (default 600)
#
# Options:
#   --lib instrumented   (default) build a copy of the library with coverage
#                        and AddressSanitizer instrumentation (swiftc
#                        -sanitize=fuzzer,address) into build/fuzz-lib and
#                        link the harness against it: coverage guides the
#                        fuzzer through the library and ASan checks its
#                        memory accesses (~20 s of build here).
#   --lib release        link against the release library in $PREFIX
#                        (default build/install, built by scripts/build.sh if
#                        missing): only the harness is instrumented, so the
#                        fuzzer is guided by the harness's own branches, and
#                        ASan sees only what the library does through libc
#                        (memcpy, malloc); leak detection works all the same.
#   --out DIR            where new corpus entries go (default $FUZZ_WORK/corpus,
#                        with --runs a fresh $FUZZ_WORK/corpus-runs;
#                        never into git: the seeds in Tests/fuzz/corpus are read only)
#   --seed N             libFuzzer's random seed (default 1 with --runs, else random)
#   --build-only         build, do not run
#   -- ARGS              more libFuzzer arguments
# Prints executions, executions per second, corpus size, coverage (libFuzzer's
# cov / ft) and the crashes found; exits non-zero on any crash, leak, timeout
# or out-of-memory. FUZZ_WORK (default build/fuzz) holds the builds, logs and
# artifacts; crash inputs land in $FUZZ_WORK/artifacts; replay one with
#   FUZZ_VERBOSE=1 build/fuzz/fuzz_abi <file>
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-$ROOT/build/install}
CC=${FUZZ_CC:-/opt/swift/usr/bin/clang}
MODE=time
RUNS=0
SECONDS_TOTAL=600
LIB=instrumented
WORK=${FUZZ_WORK:-$ROOT/build/fuzz}
OUT=$WORK/corpus
OUT_SET=0
SEED=
BUILD_ONLY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) MODE=runs; RUNS=$2; shift 2 ;;
    --time) MODE=time; SECONDS_TOTAL=$2; shift 2 ;;
    --lib) LIB=$2; shift 2 ;;
    --out) OUT=$2; OUT_SET=1; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The fixed-count mode starts from the seeds alone, every time.
if [ "$MODE" = runs ] && [ "$OUT_SET" = 0 ]; then OUT=$WORK/corpus-runs; rm -rf "$OUT"; fi
mkdir -p "$WORK/artifacts" "$OUT"

# The library to fuzz.
case "$LIB" in
  instrumented)
    LIBDIR=$WORK/lib-install/lib
    # CMake's compiler check links an executable, which -sanitize=fuzzer would
    # give libFuzzer's main: skip it (the same compiler built the release).
    cmake -S "$ROOT" -B "$WORK/lib-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_Swift_COMPILER_WORKS=TRUE -DCMAKE_Swift_FLAGS="-sanitize=fuzzer,address" \
      -DCMAKE_INSTALL_PREFIX="$WORK/lib-install" >/dev/null
    # ld.gold warns about every ASan assembly helper it cannot export: noise.
    cmake --build "$WORK/lib-build" 2>&1 | grep -v -E "Cannot export local symbol|^\[[0-9]+/[0-9]+\]|Incremental compilation has been disabled" || true
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz.sh: building the instrumented library failed" >&2; exit 1; }
    cmake --install "$WORK/lib-build" >/dev/null
    ;;
  release)
    LIBDIR=$PREFIX/lib
    [ -e "$LIBDIR/libburst_attention.so" ] || "$ROOT/scripts/build.sh"
    ;;
  *) echo "fuzz.sh: --lib instrumented|release" >&2; exit 2 ;;
esac

BIN=$WORK/fuzz_abi-$LIB
"$CC" -g -O1 -std=c11 -Wall -Wextra -Werror -fsanitize=fuzzer,address -fuse-ld=lld \
  -I "$ROOT/include" "$ROOT/Tests/fuzz/fuzz_abi.c" -L "$LIBDIR" -lburst_attention \
  -Wl,-rpath,"$LIBDIR" -lm -lpthread -o "$BIN"
ln -sf "$(basename "$BIN")" "$WORK/fuzz_abi"
echo "fuzz.sh: built $BIN against $LIBDIR/libburst_attention.so ($LIB)"
[ "$BUILD_ONLY" = 1 ] && exit 0

# Allocations above 4 GiB fail (return NULL) as on a machine with less memory,
# so the library's out-of-memory paths run instead of the fuzzer's malloc
# limit stopping the run; real growth is still caught by -rss_limit_mb.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:max_allocation_size_mb=4096:detect_leaks=1:handle_abort=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/Tests/fuzz/lsan.supp:print_suppressions=0}
# The Swift runtime's crash backtracer would interpose on libFuzzer's handlers.
export SWIFT_BACKTRACE=enable=no
ARGS=(-timeout=30 -rss_limit_mb=6144 -malloc_limit_mb=6144 -max_len=1024 -print_final_stats=1
      -artifact_prefix="$WORK/artifacts/" -detect_leaks=1)
if [ "$MODE" = runs ]; then ARGS+=(-runs="$RUNS" -seed="${SEED:-1}")
else ARGS+=(-max_total_time="$SECONDS_TOTAL"); [ -n "$SEED" ] && ARGS+=(-seed="$SEED"); fi

LOG=$WORK/fuzz-$MODE.log
set +e
"$BIN" "${ARGS[@]}" "${EXTRA[@]}" "$OUT" "$ROOT/Tests/fuzz/corpus" >"$LOG" 2>&1
status=$?
set -e

# Summary from libFuzzer's log.
last=$(grep -E '^#[0-9]+' "$LOG" | tail -n 1 || true)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOG" | tail -n 1)
cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
crashes=$(grep -c -E '^==[0-9]+==ERROR|FUZZ ORACLE VIOLATION|ERROR: libFuzzer' "$LOG" || true)
grep -E '^fuzz_abi: ' "$LOG" || true
echo "fuzz.sh: executions ${execs:-?}, ${rate:-?} exec/s, corpus ${corp:-?} (units/size), cov ${cov:-?}, ft ${ft:-?}, crashes ${crashes}; new corpus entries in $OUT; log $LOG"
if [ "$status" != 0 ]; then
  echo "fuzz.sh: the fuzzer stopped with status $status:" >&2
  grep -E -A 30 'FUZZ ORACLE VIOLATION|^==[0-9]+==ERROR|ERROR: libFuzzer|SUMMARY' "$LOG" | head -n 80 >&2
  ls -t "$WORK/artifacts" 2>/dev/null | head -n 3 | sed "s|^|  artifact: $WORK/artifacts/|" >&2
  exit "$status"
fi
