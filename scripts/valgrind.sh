#!/usr/bin/env bash
# valgrind memcheck of the C clients under mpirun at 1, 2 and 3 ranks (one valgrind per
# rank), against the installed release library (build/install, built if missing).
#
# OpenMPI's own MPI_Init/MPI_Finalize losses are suppressed by a file generated per rank
# count from a bare MPI_Init/MPI_Finalize program (Tests/valgrind/mpi_bare.c, under
# --gen-suppressions=all); Tests/valgrind/swift-runtime.supp holds the one documented
# Swift-runtime entry. Anything else — an error, or any byte definitely, indirectly or
# possibly lost — fails. The negative control (Tests/valgrind/mpi_leak.c, a planted
# 4096-byte leak after MPI_Init) must be reported at every rank count.
#
# Valgrind's CPU has no AVX-512: the library's run-time dispatch picks AVX2 here.
# CLIENTS="..." and RANKS="..." choose a subset (default: c_client c_bad_input
# c_variants c_half c_kvcache c_transport at 1 2 3; c_transport runs --no-failures, and
# skips itself at 1 rank). c_client runs its shapes of at most 64 tokens
# (C_CLIENT_ARGS, default "--max-seq 64"; C_CLIENT_ARGS= runs its whole sweep, whose
# 300-token shape makes the run ~20 minutes instead of ~8 on 2 busy cores).
# Logs: build/valgrind/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-$ROOT/build/install}
CLIENTS=${CLIENTS:-"c_client c_bad_input c_variants c_half c_kvcache c_transport"}
RANKS=${RANKS:-"1 2 3"}
C_CLIENT_ARGS=${C_CLIENT_ARGS-"--max-seq 64"}
OUT=$ROOT/build/valgrind
BUILD=$ROOT/build/valgrind-clients
started=$(date +%s)

command -v valgrind >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
[ -f "$PREFIX/lib/libburst_attention.so" ] || PREFIX=$PREFIX "$ROOT/scripts/build.sh"
cmake -S "$ROOT/Tests/clients" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DPYTHON_EXECUTABLE=/nonexistent >/dev/null
cmake --build "$BUILD" --target $CLIENTS mpi_bare mpi_leak | grep -v "^\[" || true

echo "== valgrind $(valgrind --version | sed 's/valgrind-//') memcheck, libburst_attention from $PREFIX"
rm -rf "$OUT"
mkdir -p "$OUT"
failed=()
for ranks in $RANKS; do
  for client in $CLIENTS; do
    t0=$(date +%s)
    args=()
    [ "$client" = c_client ] && read -r -a args <<<"$C_CLIENT_ARGS"
    [ "$client" = c_transport ] && args=(--no-failures)  # no abandoned MPI_Iallgather
    if line=$("$ROOT/Tests/valgrind/memcheck.sh" "$ranks" "$BUILD/mpi_bare" "$OUT" "$BUILD/$client" ${args[@]+"${args[@]}"}); then
      verdict=clean
    else
      verdict=FAILED; failed+=("$client at $ranks ranks")
    fi
    echo "$line  $verdict  $(($(date +%s) - t0)) s${args[*]:+  (${args[*]})}"
  done
  if "$ROOT/Tests/valgrind/memcheck.sh" --expect-leak 4096 "$ranks" "$BUILD/mpi_bare" "$OUT" "$BUILD/mpi_leak" >"$OUT/control-np$ranks.txt"; then
    echo "negative control mpi_leak at $ranks ranks: its planted leak is reported"
  else
    cat "$OUT/control-np$ranks.txt"; failed+=("negative control at $ranks ranks (planted leak not reported)")
  fi
done
echo "OpenMPI suppressions generated: $(for f in "$OUT"/openmpi-np*.supp; do echo -n "$(basename "$f") $(grep -c '^{' "$f") entries; "; done)"
echo "== valgrind.sh: $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  echo "logs: $OUT" >&2
  exit 1
fi
echo "valgrind.sh: every client clean at ranks $RANKS"
