#!/usr/bin/env bash
# The whole test suite: installs, builds, runs the Swift tests (kernels and
# schedules over the in-process loopback transport, release build), then the
# C, C++ and Python clients under mpirun with 1-4 ranks through CTest, whose
# summary line ends the output.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
PREFIX=${PREFIX:-$ROOT/build/install}

echo "== Swift tests (swift test -c release)"
set +e
(cd "$ROOT" && swift test -c release 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]|started at')
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then echo "Swift tests failed (exit $status)" >&2; exit "$status"; fi

# The same schedules on the other kernel code paths the run-time dispatch can
# pick: AVX2 row kernels and AVX2 JIT products, and the portable Swift loops
# (which also selects the portable bf16/fp16 conversions).
for path in "LIBXSMM_TARGET=hsw" "BURST_KERNELS=portable"; do
  echo "== Swift correctness tests with $path"
  (cd "$ROOT" && env "$path" swift test -c release --skip-build \
     --filter 'CorrectnessTests|CommunicationVolumeTests|VariantTests|BackwardSplitTests|StorageTypeTests|StorageConversionTests|DecodeTests|ComputeTests|ScoreModifierTests' 2>&1 | grep -E 'Executed|error|failed' | tail -n 3
   exit "${PIPESTATUS[0]}")
done

echo "== C, C++ and Python clients (ctest)"
cmake -S "$ROOT/Tests/clients" -B "$ROOT/build/clients" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DPYTHON_EXECUTABLE="$(command -v "${PYTHON:-python3}")" >/dev/null
cmake --build "$ROOT/build/clients"
cd "$ROOT/build/clients"
ctest --output-on-failure
