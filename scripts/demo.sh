#!/usr/bin/env bash
# The main demo: installs, builds, then runs attention forward + backward over
# a sequence sharded across 2 MPI ranks, checked against a float64 reference.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
PREFIX=${PREFIX:-$ROOT/build/install}
cmake -S "$ROOT/examples/c" -B "$ROOT/build/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" >/dev/null
cmake --build "$ROOT/build/examples" >/dev/null
"$ROOT/scripts/mpirun.sh" -n 2 "$ROOT/build/examples/burst_demo" "$@"
