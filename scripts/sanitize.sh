#!/usr/bin/env bash
# The test suite under a sanitizer:  scripts/sanitize.sh address|thread
#
#  1. Builds the Swift package and its tests with --sanitize=<kind>, release, into its
#     own scratch path (.build-asan or .build-tsan), and runs the whole XCTest suite.
#  2. Negative controls: SanitizerControlTests with BURST_SANITIZER_CONTROL set plants a
#     heap overflow and a leak (address) or a data race between WorkerPool threads
#     (thread); the sanitizer must report each, else this script fails.
#  3. Builds libburst_attention.so with the sanitizer (CMake, -sanitize=<kind>, into
#     build/<kind>-install) and the C clients of Tests/clients with clang -fsanitize=<kind>
#     against it, and runs c_client, c_bad_input, c_variants, c_half, c_kvcache and
#     c_transport (a caller-supplied transport over MPI; --no-failures: an abandoned
#     MPI_Iallgather is OpenMPI memory never freed) under
#     mpirun -n 1 (two compute threads) and -n 2 (MPI traffic). address also runs
#     Tests/valgrind/mpi_bare.c (must be clean with the OpenMPI suppressions) and
#     Tests/valgrind/mpi_leak.c (its planted leaks must be reported).
#
# Exits non-zero on any sanitizer report, any failed test, a missing test summary or a
# control that was not reported. Reports and outputs: build/sanitize-<kind>/.
#
# Suppressions: Tests/sanitizers/lsan-openmpi.supp (OpenMPI's MPI_Init/MPI_Finalize
# leaks, for the C clients); the XCTest harness's own leaks are sorted out by
# Tests/sanitizers/lsan_xctest_filter.py (why it is a filter: see that file). A
# Tests/sanitizers/tsan.supp: the swift_once initialisation reports (see the file).
#
# PARTS="xctest controls clients" (default: all three) runs a subset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIND=${1:-}
case "$KIND" in
  address) short=asan; RUNTIME_OPTIONS=ASAN_OPTIONS ;;
  thread) short=tsan; RUNTIME_OPTIONS=TSAN_OPTIONS ;;
  *) echo "usage: $0 address|thread" >&2; exit 2 ;;
esac
PARTS=${PARTS:-"xctest controls clients"}
OUT=$ROOT/build/sanitize-$KIND
SCRATCH=$ROOT/.build-$short
SUPP=$ROOT/Tests/sanitizers
SWIFT_BIN=$(dirname "$(command -v swift)")
CLANG=$SWIFT_BIN/clang
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$SWIFT_BIN/llvm-symbolizer}
export TSAN_SYMBOLIZER_PATH=${TSAN_SYMBOLIZER_PATH:-$SWIFT_BIN/llvm-symbolizer}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Keep OpenMPI's (and PMIx's) components loaded to the end, so that LSan, which runs
# at exit, can still name their frames.
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
mkdir -p "$OUT"
rm -f "$OUT"/*.log.* "$OUT"/*.out
problems=()
started=$(date +%s)

tsan_extra=""
if [ "$KIND" = thread ] && [ -f "$SUPP/tsan.supp" ]; then tsan_extra=":suppressions=$SUPP/tsan.supp"; fi

# Sanitizer reports in log files named <prefix>.<pid>, besides LSan's (sorted elsewhere).
reports_in() {  # prefix
  cat "$1".* 2>/dev/null | grep -E "^(==[0-9]+==)?(ERROR: AddressSanitizer|WARNING: ThreadSanitizer|ERROR: ThreadSanitizer)" || true
}

# --- 1. the XCTest suite -----------------------------------------------------------
swift_build() {
  echo "== swift build --build-tests -c release --sanitize=$KIND --scratch-path ${SCRATCH#"$ROOT"/}"
  (cd "$ROOT" && swift build --build-tests -c release --sanitize="$KIND" --scratch-path "$SCRATCH" \
      -Xswiftc -enable-testing 2>&1 | grep -E "error|warning: .*(sanitiz|unsafe)|Compiling|Build complete" | grep -v "^\[" | tail -n 3)
}

# Runs `swift test --skip-build` with the sanitizer's log at $OUT/<name>.log.<pid>.
swift_test() {  # name, then swift test arguments
  local name=$1; shift
  local opts="log_path=$OUT/$name.log"
  [ "$KIND" = thread ] && opts="$opts$tsan_extra"
  set +e
  (cd "$ROOT" && env "$RUNTIME_OPTIONS=$opts" swift test -c release --sanitize="$KIND" \
     --scratch-path "$SCRATCH" --skip-build "$@" >"$OUT/$name.out" 2>&1)
  local status=$?
  set -e
  return $status
}

if [[ " $PARTS " == *" xctest "* || " $PARTS " == *" controls "* ]]; then swift_build; fi

if [[ " $PARTS " == *" xctest "* ]]; then
  echo "== XCTest suite under $KIND sanitizer"
  t0=$(date +%s)
  swift_test xctest || true   # the status is read from the summary and the logs below
  grep -E "^Test Suite 'All tests' (passed|failed)|Executed [0-9]+ tests?, with [0-9]+ failures? .*\) in" "$OUT/xctest.out" | tail -n 2
  grep -E "error: .* : " "$OUT/xctest.out" || true
  summary=$(grep -E "^[[:space:]]*Executed [0-9]+ tests?, with [0-9]+ failures?" "$OUT/xctest.out" | tail -n 1 || true)
  if ! grep -q "^Test Suite 'All tests' passed" "$OUT/xctest.out"; then
    problems+=("XCTest: the suite did not pass (failed test, crash or no summary; see $OUT/xctest.out)")
  fi
  found=$(reports_in "$OUT/xctest.log")
  if [ -n "$found" ]; then
    problems+=("XCTest: $(echo "$found" | wc -l) sanitizer report(s) in $OUT/xctest.log.*")
    echo "$found" | sort | uniq -c
  fi
  if [ "$KIND" = address ]; then
    if ! python3 "$SUPP/lsan_xctest_filter.py" "$ROOT" "$OUT"/xctest.log.* 2>/dev/null; then
      problems+=("XCTest: LeakSanitizer records of ours (see above)")
    fi
    ls "$OUT"/xctest.log.* >/dev/null 2>&1 || echo "LSan: no report file at all (no leak anywhere, not even the harness's)"
  fi
  echo "XCTest under $KIND: ${summary:-no summary}, $(($(date +%s) - t0)) s"
fi

# --- 2. negative controls ----------------------------------------------------------
control() {  # value, pattern that the report must contain
  local value=$1 pattern=$2
  BURST_SANITIZER_CONTROL=$value swift_test "control-$value" --filter SanitizerControlTests || true
  if cat "$OUT/control-$value.log".* 2>/dev/null | grep -q -E "$pattern"; then
    echo "control '$value': reported ($pattern)"
  else
    problems+=("control '$value': the planted bug was NOT reported (expected '$pattern' in $OUT/control-$value.log.*)")
  fi
}
if [[ " $PARTS " == *" controls "* ]]; then
  echo "== negative controls"
  if [ "$KIND" = address ]; then
    control overflow "ERROR: AddressSanitizer: heap-buffer-overflow"
    control leak "leak of"
    # The planted leak must be classified as ours by the filter.
    if python3 "$SUPP/lsan_xctest_filter.py" "$ROOT" "$OUT"/control-leak.log.* >/dev/null 2>&1; then
      problems+=("control 'leak': lsan_xctest_filter.py did not attribute the lost WorkerPool to the library")
    else
      echo "control 'leak': lsan_xctest_filter.py calls it ours"
    fi
  else
    control race "WARNING: ThreadSanitizer: (data race|Swift access race)"
  fi
fi

# --- 3. C clients against the sanitized library ---------------------------------------
if [[ " $PARTS " == *" clients "* ]]; then
  echo "== libburst_attention.so with -sanitize=$KIND (CMake) and the C clients (clang -fsanitize=$KIND)"
  prefix=$ROOT/build/$KIND-install
  cmake -S "$ROOT" -B "$ROOT/build/$KIND-lib" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_Swift_FLAGS="-sanitize=$KIND" -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
  cmake --build "$ROOT/build/$KIND-lib" | grep -v "^\[\|remark:" || true
  cmake --install "$ROOT/build/$KIND-lib" >/dev/null
  cflags="-fsanitize=$KIND -fno-omit-frame-pointer -g"
  ldflags="-fsanitize=$KIND"
  if [ "$KIND" = thread ]; then
    # The toolchain's TSan runtime has libdispatch interceptors: link its libdispatch.
    swiftlib=$(dirname "$SWIFT_BIN")/lib/swift/linux
    ldflags="$ldflags -L$swiftlib -Wl,-rpath,$swiftlib -ldispatch -lBlocksRuntime"
  fi
  CC=$CLANG CXX=$CLANG++ cmake -S "$ROOT/Tests/clients" -B "$ROOT/build/$KIND-clients" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" \
    -DCMAKE_EXE_LINKER_FLAGS="$ldflags" -DCMAKE_PREFIX_PATH="$prefix" \
    -DPYTHON_EXECUTABLE=/nonexistent >/dev/null
  # (gold warns once per ASan symbol it cannot export; nothing to act on)
  cmake --build "$ROOT/build/$KIND-clients" --target c_client c_bad_input c_variants c_half c_kvcache c_transport c_transport_threads 2>&1 \
    | grep -v "Cannot export local symbol\|^\[" || true
  clients=$ROOT/build/$KIND-clients

  if [ "$KIND" = address ]; then
    opts="fast_unwind_on_malloc=0:detect_leaks=1"
    lsan="suppressions=$SUPP/lsan-openmpi.supp:print_suppressions=0"
    # The suppressions against a bare MPI_Init/MPI_Finalize (must be clean) and a
    # planted leak after MPI_Init (must be reported).
    for prog in mpi_bare mpi_leak; do
      "$CLANG" $cflags $(mpicc --showme:compile) -o "$OUT/$prog" "$ROOT/Tests/valgrind/$prog.c" \
        $(mpicc --showme:link) 2>&1 | grep -v "Cannot export local symbol" || true
      "${MPIRUN[@]}" -n 2 env "ASAN_OPTIONS=$opts:log_path=$OUT/$prog.log" "LSAN_OPTIONS=$lsan" \
        "$OUT/$prog" >"$OUT/$prog.out" 2>&1 || true
    done
    if cat "$OUT"/mpi_bare.log.* 2>/dev/null | grep -q "leak of"; then
      problems+=("mpi_bare: OpenMPI leaks that Tests/sanitizers/lsan-openmpi.supp does not cover ($OUT/mpi_bare.log.*)")
    else
      echo "mpi_bare: clean with lsan-openmpi.supp"
    fi
    if [ "$(cat "$OUT"/mpi_leak.log.* 2>/dev/null | grep -c -E "Direct leak of 4096 byte|PMPI_Comm_dup")" -ge 2 ]; then
      echo "mpi_leak (control): the lost 4096 bytes and the unfreed communicator are reported"
    else
      problems+=("mpi_leak (control): LSan did not report the planted leaks ($OUT/mpi_leak.log.*)")
    fi
  else
    opts="halt_on_error=0$tsan_extra"
    lsan=""
  fi

  # (c_transport_threads: P ranks as threads of one process over an in-memory
  # mailbox, no MPI — run once, outside mpirun.)
  for ranks in 1 2 threads; do
    for client in c_client c_bad_input c_variants c_half c_kvcache c_transport; do
      name=$client-np$ranks
      args=()
      [ "$client" = c_transport ] && args=(--no-failures)
      t0=$(date +%s)
      set +e
      if [ "$ranks" = threads ]; then
        [ "$client" = c_client ] || continue
        name=c_transport_threads
        env "$RUNTIME_OPTIONS=$opts:log_path=$OUT/$name.log" ${lsan:+"LSAN_OPTIONS=$lsan"} \
          "$clients/c_transport_threads" >"$OUT/$name.out" 2>&1
      else
        "${MPIRUN[@]}" -n "$ranks" env "$RUNTIME_OPTIONS=$opts:log_path=$OUT/$name.log" ${lsan:+"LSAN_OPTIONS=$lsan"} \
          "$clients/$client" "${args[@]}" >"$OUT/$name.out" 2>&1
      fi
      status=$?
      set -e
      found=$(reports_in "$OUT/$name.log")
      leaks=$(cat "$OUT/$name.log".* 2>/dev/null | grep -c -E "^(Direct|Indirect) leak of" || true)
      printf '%-18s exit %-3s %2s s  sanitizer reports: %s, leak records: %s\n' "$name" "$status" \
        "$(($(date +%s) - t0))" "$(echo -n "$found" | grep -c . || true)" "$leaks"
      if [ "$status" != 0 ] || [ -n "$found" ] || [ "$leaks" != 0 ]; then
        problems+=("$name: exit $status, see $OUT/$name.out and $OUT/$name.log.*")
        [ -n "$found" ] && echo "$found" | sort | uniq -c
      fi
    done
  done
fi

echo "== sanitize.sh $KIND: $(($(date +%s) - started)) s"
if [ ${#problems[@]} -gt 0 ]; then
  printf 'PROBLEM: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "sanitize.sh $KIND: clean"
