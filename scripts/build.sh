#!/usr/bin/env bash
# Builds libburst_attention with CMake and installs it into $PREFIX
# (default: build/install inside the repository).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-$ROOT/build/install}
cmake -S "$ROOT" -B "$ROOT/build/lib" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" >/dev/null
cmake --build "$ROOT/build/lib"
cmake --install "$ROOT/build/lib" >/dev/null
echo "installed libburst_attention into $PREFIX"
